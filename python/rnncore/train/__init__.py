"""rnncore.train: the training layer — optimisers and schedules, losses, CTC, truncated BPTT,
checkpoints and gradient-flow diagnostics. Builds on rnncore.nn only."""
