// The registry of cells: the one list of cells in rnncore.
//
// Everything that needs "every cell" reads it: the instantiation files (CMake generates one
// translation unit per line), the bindings' dispatch and their exported `CELLS`, the Python
// modules, the tests, the benchmarks and the CUDA compile check. Adding a cell is: its header
// (the pointwise forward/backward and the traits below), one line here, and its numpy reference
// step in python/rnncore/reference.py (plus a one-line public class if it is public);
// docs/adding_a_cell.md walks through it.
//
//   X(name, type)   name: the cell's identifier everywhere (Python, reference.py, tests)
//
// Traits every cell type declares (see cells/lstm.hpp for a full example):
//   name                 the registry name, as a string
//   kGates               G, gate blocks of the weights (PyTorch order)
//   kHasCellState        true for a second state c (LSTM)
//   kHasPeephole         true for a (3, H) peephole weight, rows [i, f, o]
//   kStashSlots          H-wide values per (step, row) the training forward keeps for BPTT
//   kPhases, kPhaseFirstGate, kDirectHiddenGrad, kOperandSlot, kGateSlots: how the sequence
//                        driver schedules the recurrent products (cells/pointwise.hpp)
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "rnncore/cells/gru.hpp"
#include "rnncore/cells/lstm.hpp"
#include "rnncore/cells/rnn.hpp"

#define RNNCORE_FOR_EACH_CELL(X)                                  \
  X(rnn_tanh, ::rnncore::RnnCell<::rnncore::Nonlinearity::Tanh>) \
  X(rnn_relu, ::rnncore::RnnCell<::rnncore::Nonlinearity::Relu>) \
  X(lstm, ::rnncore::LstmCell<false>)                             \
  X(peephole_lstm, ::rnncore::LstmCell<true>)                     \
  X(gru, ::rnncore::GruCell<true>)                                \
  X(gru_reset_before, ::rnncore::GruCell<false>)

namespace rnncore {

// What a caller outside the kernels needs to know of a cell.
struct CellInfo {
  const char* name;
  int gates;          // G
  int states;         // 1 (h) or 2 (h, c)
  int peephole_rows;  // 0, or 3 for the (3, H) peephole weight
  int stash_slots;    // H-wide values kept per (step, row) for BPTT
};

template <class Cell>
constexpr CellInfo cell_info() {
  return {Cell::name, Cell::kGates, Cell::kHasCellState ? 2 : 1, Cell::kHasPeephole ? 3 : 0,
          Cell::kStashSlots};
}

#define RNNCORE_CELL_TYPE(NAME, TYPE) , TYPE
#define RNNCORE_CELL_INFO(NAME, TYPE) ::rnncore::cell_info<TYPE>(),
namespace detail {
template <class First, class... Cells>
struct DropFirst {
  using type = std::tuple<Cells...>;
};
}  // namespace detail
// The registry's cell types in registry order (std::tuple_element_t<i, CellTypes>).
using CellTypes = detail::DropFirst<void RNNCORE_FOR_EACH_CELL(RNNCORE_CELL_TYPE)>::type;
// Their descriptions, in the same order.
inline constexpr CellInfo kCells[] = {RNNCORE_FOR_EACH_CELL(RNNCORE_CELL_INFO)};
inline constexpr std::size_t kNumCells = std::tuple_size_v<CellTypes>;
#undef RNNCORE_CELL_TYPE
#undef RNNCORE_CELL_INFO

// A value standing for a cell type, for generic lambdas: f(CellTag<Cell>{}).
template <class Cell>
struct CellTag {
  using type = Cell;
};

[[noreturn]] inline void throw_unknown_cell(std::string_view name) {
  std::string known;
  for (const CellInfo& c : kCells) known += (known.empty() ? "" : ", ") + std::string(c.name);
  throw std::invalid_argument("unknown cell '" + std::string(name) + "' (known: " + known + ")");
}

// Calls f(CellTag<Cell>{}) for the registry cell called `name` and returns its result; throws
// std::invalid_argument listing the known names for any other name.
template <std::size_t I = 0, class F>
decltype(auto) with_cell(std::string_view name, F&& f) {
  using Tag = CellTag<std::tuple_element_t<I, CellTypes>>;
  if constexpr (I + 1 == kNumCells) {
    if (name != kCells[I].name) throw_unknown_cell(name);
    return f(Tag{});
  } else {
    if (name == kCells[I].name) return f(Tag{});
    return with_cell<I + 1>(name, std::forward<F>(f));
  }
}

// The description of the registry cell called `name` (std::invalid_argument if unknown).
inline const CellInfo& find_cell(std::string_view name) {
  for (const CellInfo& c : kCells)
    if (name == c.name) return c;
  throw_unknown_cell(name);
}

}  // namespace rnncore
