// rnncore._core: the pybind11 module. This file only declares it: each object binds itself in
// its own file (stack.cpp: Stack; step.cpp: Step, StepRecord; linalg.cpp: matmul, fma_peak;
// ctc.cpp: ctc_loss), with the checks and the GIL handling they share in common.hpp. Here: the
// runtime (threads, the bf16 kernel, the Ctrl-C check), the cell registry and the version.
#include <pybind11/pybind11.h>

#include <string>

#include "rnncore/cells.hpp"
#include "rnncore/runtime.hpp"

namespace py = pybind11;

namespace rnncore::bindings {

void bind_stack(py::module_& m);   // stack.cpp
void bind_step(py::module_& m);    // step.cpp
void bind_linalg(py::module_& m);  // linalg.cpp
void bind_ctc(py::module_& m);     // ctc.cpp

namespace {

// Ctrl-C during a long call (runtime.hpp, "interruption"): the time loops ask this every few tens
// of milliseconds. Python runs signal handlers in its main thread only, so only that thread looks;
// a handler's exception (KeyboardInterrupt) stays set for the call to raise when it returns
// (run_without_gil, common.hpp).
unsigned long g_main_thread_ident = 0;

bool python_signal_pending() {
  if (PyThread_get_thread_ident() != g_main_thread_ident) return false;
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

}  // namespace
}  // namespace rnncore::bindings

PYBIND11_MODULE(_core, m) {
  namespace bindings = rnncore::bindings;
  m.doc() = "rnncore C++ core (internal; use the rnncore package)";
  bindings::bind_stack(m);
  bindings::bind_step(m);
  bindings::bind_linalg(m);
  bindings::bind_ctc(m);
  bindings::g_main_thread_ident =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  rnncore::set_interrupt_check(&bindings::python_signal_pending);
  m.def("bf16_kernel", [] { return std::string(rnncore::bf16_kernel_name(rnncore::bf16_kernel())); },
        "The kernel precision='bf16' runs on this CPU: 'avx512_bf16', or 'none' (float32).");
  m.def("set_num_threads", &rnncore::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &rnncore::get_num_threads);
  // The registry (cells.hpp), which the Python layer reads instead of keeping a list of its own.
  py::list cells;
  for (const rnncore::CellInfo& c : rnncore::kCells)
    cells.append(py::dict(py::arg("name") = c.name, py::arg("gates") = c.gates,
                          py::arg("states") = c.states, py::arg("peephole_rows") = c.peephole_rows,
                          py::arg("stash_slots") = c.stash_slots));
  m.attr("CELLS") = py::tuple(cells);
#ifdef RNNCORE_VERSION
  m.attr("__version__") = RNNCORE_VERSION;
#endif
}
