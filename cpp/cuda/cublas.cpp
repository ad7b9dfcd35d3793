// Run-time loading of cuBLAS (cublas.hpp).
#include "cublas.hpp"

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>
#include <vector>

namespace rnncore {
namespace cuda {
namespace blas {
namespace {

std::mutex g_mutex;
std::string g_path;
std::string g_loaded;
Api g_api;
bool g_ready = false;

// Newest major first; a cuBLAS of another major than the toolkit's runtime works with the same
// driver (it calls the driver API itself).
const char* const kSonames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};

template <class F>
void bind(void* lib, const char* name, F& fn, std::string& missing) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) missing += std::string(missing.empty() ? "" : ", ") + name;
}

}  // namespace

void set_library_path(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_path = path;
}

std::string loaded_library() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_loaded;
}

std::string candidates() {
  std::string s;
  for (const char* n : kSonames) s += std::string(s.empty() ? "" : ", ") + n;
  return s;
}

const Api& api() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_ready) return g_api;
  std::vector<std::string> tried;
#ifdef RNNCORE_CUDA_TOOLKIT_LIBDIR
  // The toolkit the module was built with, when it has cuBLAS (it need not be on the loader's
  // path); a missing file is simply the next candidate.
  for (const char* n : kSonames) tried.push_back(std::string(RNNCORE_CUDA_TOOLKIT_LIBDIR) + "/" + n);
#endif
  if (!g_path.empty()) tried.push_back(g_path);
  for (const char* n : kSonames) tried.emplace_back(n);
  std::string errors;
  for (const std::string& name : tried) {
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      errors += "\n  " + name + ": " + (e ? e : "not loadable");
      continue;
    }
    Api a;
    std::string missing;
    bind(lib, "cublasCreate_v2", a.create, missing);
    bind(lib, "cublasDestroy_v2", a.destroy, missing);
    bind(lib, "cublasSetStream_v2", a.set_stream, missing);
    bind(lib, "cublasSetAtomicsMode", a.set_atomics_mode, missing);
    bind(lib, "cublasSgemm_v2", a.sgemm, missing);
    bind(lib, "cublasDgemm_v2", a.dgemm, missing);
    if (!missing.empty()) {
      errors += "\n  " + name + ": lacks " + missing;
      dlclose(lib);
      continue;
    }
    g_api = a;
    g_loaded = name;
    g_ready = true;
    return g_api;
  }
  throw std::runtime_error(
      "rnncore CUDA: cuBLAS could not be loaded (pip install \"rnncore[cuda]\" brings the "
      "nvidia-cublas wheel, or put a CUDA toolkit's libcublas on LD_LIBRARY_PATH); tried:" +
      errors);
}

}  // namespace blas
}  // namespace cuda
}  // namespace rnncore
