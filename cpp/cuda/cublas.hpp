// cuBLAS, loaded at run time (dlopen) rather than linked: the CUDA build then needs only nvcc and
// the CUDA runtime of the toolkit (no cuBLAS headers or libraries at build time), `import
// rnncore._cuda` works without cuBLAS, and the library comes from wherever it is installed, tried
// in this order: the lib folder of the toolkit the module was built with (when it has cuBLAS),
// the PyPI wheel nvidia-cublas (`pip install "rnncore[cuda]"`; rnncore.cuda passes its path),
// then libcublas.so.<major> on the loader's path.
//
// Only the few entry points rnncore uses are declared, with the C ABI of cuBLAS's v2 API
// (cublas_api.h): handles are opaque pointers and the enums are ints with these values.
#pragma once

#include <string>

namespace rnncore {
namespace cuda {
namespace blas {

using Handle = void*;  // cublasHandle_t
inline constexpr int kSuccess = 0;             // CUBLAS_STATUS_SUCCESS
inline constexpr int kOpN = 0, kOpT = 1;       // CUBLAS_OP_N, CUBLAS_OP_T
inline constexpr int kAtomicsNotAllowed = 0;   // CUBLAS_ATOMICS_NOT_ALLOWED

struct Api {
  int (*create)(Handle*) = nullptr;                         // cublasCreate_v2
  int (*destroy)(Handle) = nullptr;                         // cublasDestroy_v2
  int (*set_stream)(Handle, void*) = nullptr;               // cublasSetStream_v2
  int (*set_atomics_mode)(Handle, int) = nullptr;           // cublasSetAtomicsMode
  int (*sgemm)(Handle, int, int, int, int, int, const float*, const float*, int, const float*,
               int, const float*, float*, int) = nullptr;   // cublasSgemm_v2
  int (*dgemm)(Handle, int, int, int, int, int, const double*, const double*, int,
               const double*, int, const double*, double*, int) = nullptr;  // cublasDgemm_v2
};

// The library path tried first (rnncore.cuda sets the nvidia-cublas wheel's); "" for none.
void set_library_path(const std::string& path);
// Loads cuBLAS on first use; std::runtime_error listing what was tried when none loads.
const Api& api();
// The file loaded, or "" before the first successful api().
std::string loaded_library();
// The sonames tried after set_library_path's, in order.
std::string candidates();

}  // namespace blas
}  // namespace cuda
}  // namespace rnncore
