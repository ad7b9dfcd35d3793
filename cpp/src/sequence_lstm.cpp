// Instantiations of the sequence driver for the LSTM cells.
#include "rnncore/cells.hpp"
#include "sequence_impl.hpp"

namespace rnncore {
RNNCORE_INSTANTIATE_SEQUENCE(LstmCell<false>, float)
RNNCORE_INSTANTIATE_SEQUENCE(LstmCell<false>, double)
RNNCORE_INSTANTIATE_SEQUENCE(LstmCell<true>, float)
RNNCORE_INSTANTIATE_SEQUENCE(LstmCell<true>, double)
}  // namespace rnncore
