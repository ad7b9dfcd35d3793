// Schedule: the order in which a sequence driver visits the (step, sequence) pairs of a batch
// with variable lengths, and the one place in the C++ library that validates lengths.
//
// Sequences are sorted by length, longest first (stable: equal lengths keep batch order, so
// results are reproducible), so the sequences still active at step s are always the sorted rows
// [0, batch_sizes[s]) and no work is spent on padding. The valid pairs, packed in step order,
// form N rows: step s owns packed rows [offsets[s], offsets[s + 1]).
//
// Shapes (see common.hpp): lengths (B), or nullptr for every sequence of length T.
// Lifetime: nothing is kept of `lengths`; the schedule owns its vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "rnncore/common.hpp"

namespace rnncore {

struct Schedule {
  Index seq_len = 0, batch = 0;      // T, B
  Index steps = 0;                   // longest length
  Index rows = 0;                    // N = sum of lengths
  bool reverse = false;              // steps run from each sequence's last valid time to 0
  bool ragged = false;               // some length < seq_len
  std::vector<Index> order;          // sorted row r -> batch index
  std::vector<Index> sorted_length;  // length of sorted row r
  std::vector<Index> batch_sizes;    // active rows per step, plus a trailing 0
  std::vector<Index> offsets;        // first packed row of each step, plus N

  // lengths may be nullptr; throws std::invalid_argument naming the first length outside
  // [0, seq_len].
  Schedule(Index seq_len, Index batch, const int64_t* lengths, bool reverse);
  Schedule() = default;

  // Time index of sorted row r at step s.
  Index time_of(Index step, Index row) const {
    return reverse ? sorted_length[row] - 1 - step : step;
  }
};

}  // namespace rnncore
