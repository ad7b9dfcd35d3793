#include "rnncore/linalg.hpp"

#include "gemm.hpp"
#include "rnncore/runtime.hpp"

namespace rnncore {

template <class T>
void matmul(Index m, Index n, Index k, const T* a, Index lda, bool trans_a, const T* b, Index ldb,
            bool trans_b, T* c, Index ldc, bool accumulate) {
  detail::parallel_gemm(m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate,
                        get_num_threads());
}

template void matmul<float>(Index, Index, Index, const float*, Index, bool, const float*, Index,
                            bool, float*, Index, bool);
template void matmul<double>(Index, Index, Index, const double*, Index, bool, const double*,
                             Index, bool, double*, Index, bool);

}  // namespace rnncore
