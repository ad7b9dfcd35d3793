// Instantiations of the sequence driver for the vanilla RNN cells (one file per cell family keeps
// rebuilds short).
#include "rnncore/cells.hpp"
#include "sequence_impl.hpp"

namespace rnncore {
RNNCORE_INSTANTIATE_SEQUENCE(RnnCell<Nonlinearity::Tanh>, float)
RNNCORE_INSTANTIATE_SEQUENCE(RnnCell<Nonlinearity::Tanh>, double)
RNNCORE_INSTANTIATE_SEQUENCE(RnnCell<Nonlinearity::Relu>, float)
RNNCORE_INSTANTIATE_SEQUENCE(RnnCell<Nonlinearity::Relu>, double)
}  // namespace rnncore
