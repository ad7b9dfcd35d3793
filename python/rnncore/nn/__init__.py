"""rnncore.nn: the library's modules — the module protocol (one Tape), the registry of cells,
recurrent modules over whole sequences, single-step cells, layers, composition, attention, the
pyramid encoder, and device arrays for the CUDA backend. Imports nothing above it (numpy and
rnncore._ext only)."""
