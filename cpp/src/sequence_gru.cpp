// Instantiations of the sequence driver for the GRU cells.
#include "rnncore/cells.hpp"
#include "sequence_impl.hpp"

namespace rnncore {
RNNCORE_INSTANTIATE_SEQUENCE(GruCell<true>, float)
RNNCORE_INSTANTIATE_SEQUENCE(GruCell<true>, double)
RNNCORE_INSTANTIATE_SEQUENCE(GruCell<false>, float)
RNNCORE_INSTANTIATE_SEQUENCE(GruCell<false>, double)
}  // namespace rnncore
