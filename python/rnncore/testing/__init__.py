"""rnncore.testing: independent oracles — reference.py (float64 numpy loops, the readable
specification of every cell), finite-difference gradient checks, and the torch.nn twin of each
registry cell."""
