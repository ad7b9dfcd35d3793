// rnncore — common definitions of the public C++ API.
//
// Shape letters used throughout the headers:
//   T  seq_len      number of time steps
//   B  batch        number of sequences in the batch
//   I  input_size   features per input step
//   H  hidden_size  units of the hidden state
//   G  gates        gate blocks of a cell (RNN 1, LSTM 4, GRU 3)
//   N  rows         total valid (step, sequence) pairs, sum of the lengths (T*B without lengths)
//
// Arrays are dense and row-major (C order). Sequences are time-major: x is (T, B, I), y (T, B, H).
// Weights use PyTorch's layout and gate order: w_ih (G*H, I), w_hh (G*H, H), b_ih (G*H), b_hh (G*H).
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define RNNCORE_HD __host__ __device__ __forceinline__
#else
#define RNNCORE_HD inline __attribute__((always_inline))
#endif

namespace rnncore {

using Index = std::ptrdiff_t;

}  // namespace rnncore
