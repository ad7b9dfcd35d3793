// Compile-only check: the cells' pointwise math, as the CUDA kernels (pointwise.cuh) call it, and
// the inter-layer dropout mask (detail/dropout_mask.hpp) that the CPU and CUDA drivers share.
//
// For every registry cell (rnncore::CellTypes, so a new registry line is checked without an edit
// here), for float and double, and for every phase of the cell's step, this instantiates the
// pointwise forward (training and inference) and backward inside __global__ functions. nvcc then
// compiles the host pass and the device pass of the shared headers, which is what keeps the
// host+device math (activations.hpp, cells/*.hpp, detail/dropout_mask.hpp) compilable before the
// CUDA build exists.
// Nothing here runs: the kernels are only taken by address, which forces their instantiation.
//
//   nvcc -std=c++20 -I cpp/include -c cpp/cuda/compile_check.cu -o compile_check.o
// CMake builds it as the object library rnncore_cuda_check (RNNCORE_CUDA_CHECK); pytest runs the
// command above (tests/test_build.py::test_cell_math_compiles_with_nvcc).
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#include "rnncore/cells.hpp"
#include "rnncore/detail/dropout_mask.hpp"

namespace rnncore {
namespace cuda_check {

// One thread per hidden unit j of one batch row, as a pointwise kernel would be launched.
template <class Cell, int Phase, class T, bool kTrain>
__global__ void forward_kernel(ForwardRow<T> row) {
  const Index j = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < row.H) Cell::template forward<Phase, T, kTrain>(row, j);
}

template <class Cell, int Phase, class T>
__global__ void backward_kernel(BackwardRow<T> row) {
  const Index j = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < row.H) Cell::template backward<Phase, T>(row, j);
}

// One thread per element of a layer's output, as the dropout kernel is launched.
__global__ void dropout_mask_kernel(double p, uint64_t seed, Index layer, Index n, double* out) {
  const Index e = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < n) out[e] = detail::dropout_mask(p, seed, layer, e);
}

using AnyKernel = const void*;

// Addresses of the three kernels (forward training, forward inference, backward) of each phase.
template <class Cell, class T, int... Phases>
void take_phase_kernels(AnyKernel*& out, std::integer_sequence<int, Phases...>) {
  ((*out++ = reinterpret_cast<AnyKernel>(&forward_kernel<Cell, Phases, T, true>),
    *out++ = reinterpret_cast<AnyKernel>(&forward_kernel<Cell, Phases, T, false>),
    *out++ = reinterpret_cast<AnyKernel>(&backward_kernel<Cell, Phases, T>)),
   ...);
}

template <class CellTuple>
struct AllKernels;
template <class... Cells>
struct AllKernels<std::tuple<Cells...>> {
  static constexpr int kKernelsPerPhase = 3 * 2;  // {training, inference, backward} x {float, double}
  // The dropout mask kernel, then each cell's phases.
  static constexpr std::size_t count = (1 + ... + (kKernelsPerPhase * Cells::kPhases));
  static void take(AnyKernel* out) {
    *out++ = reinterpret_cast<AnyKernel>(&dropout_mask_kernel);
    (take_phase_kernels<Cells, float>(out, std::make_integer_sequence<int, Cells::kPhases>{}), ...);
    (take_phase_kernels<Cells, double>(out, std::make_integer_sequence<int, Cells::kPhases>{}), ...);
  }
};

}  // namespace cuda_check
}  // namespace rnncore

// An exported function, so no compiler may drop the instantiations as unused: it fills `out`
// (room for rnncore_cuda_check_kernel_count() entries) with the kernels' addresses.
extern "C" std::size_t rnncore_cuda_check_kernel_count() {
  return rnncore::cuda_check::AllKernels<rnncore::CellTypes>::count;
}
extern "C" void rnncore_cuda_check_kernels(const void** out) {
  rnncore::cuda_check::AllKernels<rnncore::CellTypes>::take(out);
}
