#include "rnncore/schedule.hpp"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace rnncore {

Schedule::Schedule(Index seq_len_, Index batch_, const int64_t* lengths, bool reverse_)
    : seq_len(seq_len_), batch(batch_), reverse(reverse_), order(batch_), sorted_length(batch_) {
  std::iota(order.begin(), order.end(), Index(0));
  if (lengths) {
    for (Index b = 0; b < batch; ++b)
      if (lengths[b] < 0 || lengths[b] > seq_len)
        throw std::invalid_argument("lengths[" + std::to_string(b) + "] = " +
                                    std::to_string(lengths[b]) + " is outside [0, " +
                                    std::to_string(seq_len) + "]");
    // Longest first; stable, so equal lengths keep batch order and results are reproducible.
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index b) { return lengths[a] > lengths[b]; });
    for (Index r = 0; r < batch; ++r) sorted_length[r] = lengths[order[r]];
  } else {
    std::fill(sorted_length.begin(), sorted_length.end(), seq_len);
  }
  steps = batch > 0 ? sorted_length[0] : 0;
  ragged = batch > 0 && sorted_length[batch - 1] < seq_len;
  batch_sizes.assign(steps + 1, 0);
  offsets.assign(steps + 1, 0);
  Index active = batch;
  for (Index s = 0; s < steps; ++s) {
    while (active > 0 && sorted_length[active - 1] <= s) --active;
    batch_sizes[s] = active;
    offsets[s + 1] = offsets[s] + active;
  }
  rows = offsets[steps];
}

}  // namespace rnncore
