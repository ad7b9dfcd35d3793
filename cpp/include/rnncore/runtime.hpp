// Thread control for every rnncore kernel.
#pragma once

namespace rnncore {

// Number of OpenMP threads rnncore uses; n <= 0 restores the default (OpenMP's
// omp_get_max_threads(), i.e. OMP_NUM_THREADS or the number of cores). The same thread count
// gives bitwise-identical results run to run.
void set_num_threads(int n);
int get_num_threads();

// While alive, limits the threads used by rnncore calls made from the constructing thread
// (limits nest; the smallest wins). Used to run independent calls side by side.
class ThreadLimit {
 public:
  explicit ThreadLimit(int n);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int saved_;
};

}  // namespace rnncore
