// The list of cells. Bindings, tests and benchmarks iterate over it, so adding a cell is: its
// header, one line here, and its numpy reference in python/rnncore/reference.py.
//   X(name, type)   name is the cell's identifier in Python ("lstm", "gru_reset_before", ...)
#pragma once

#include "rnncore/cells/gru.hpp"
#include "rnncore/cells/lstm.hpp"
#include "rnncore/cells/rnn.hpp"

#define RNNCORE_FOR_EACH_CELL(X)                            \
  X(rnn_tanh, ::rnncore::RnnCell<::rnncore::Nonlinearity::Tanh>) \
  X(rnn_relu, ::rnncore::RnnCell<::rnncore::Nonlinearity::Relu>) \
  X(lstm, ::rnncore::LstmCell<false>)                       \
  X(peephole_lstm, ::rnncore::LstmCell<true>)               \
  X(gru, ::rnncore::GruCell<true>)                          \
  X(gru_reset_before, ::rnncore::GruCell<false>)
