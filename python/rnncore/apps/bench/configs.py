"""What `rnncore bench` measures: the configurations and their targets, from the performance
issues. Data about some registry cells, not a list of cells (tests/test_registry.py leaves this
file out of its count): every other file of the bench reads the cells it names from here."""
from __future__ import annotations

# (registry cell, T, B, H) and the target ratios (fwd+bwd, fwd) at 2 threads from the performance issue;
# then stacks (cell, T, B, H, targets, num_layers, bidirectional), which the stack driver runs.
CONFIGS = [
    ("lstm", 50, 128, 1024, 0.8, 0.8),
    ("gru", 50, 128, 1024, 0.8, 0.8),
    ("lstm", 100, 64, 256, 0.8, 0.8),
    ("gru", 100, 64, 256, 0.8, 0.8),
    ("lstm", 25, 32, 512, 0.8, 0.8),    # DeepBench
    ("gru", 25, 32, 512, 0.8, 0.8),
    ("gru", 300, 20, 800, None, None),  # DeepSpeech2's recurrent layers (H = 800)
    ("lstm", 100, 16, 128, 0.3, 0.3),
    ("gru", 100, 16, 128, 0.3, 0.3),
    ("rnn_tanh", 100, 16, 128, 0.3, 0.3),
    ("lstm", 200, 1, 256, 0.3, 0.3),
    ("lstm", 100, 1, 32, 0.05, 0.05),
    ("gru", 100, 1, 32, 0.05, 0.05),
    ("peephole_lstm", 100, 64, 256, 0.4, None),
    ("lstm", 100, 16, 128, None, None, 2, True),
    ("gru", 100, 64, 256, None, None, 2, True),
]
ONNX_TARGET = 0.8
# Share of the FMA peak (measured in the same run) targeted at these (cell, T, B, H), 2 threads.
PEAK_TARGET = 0.8
PEAK_CONFIGS = {(c, T, B, H) for c in ("lstm", "gru")
                for T, B, H in ((50, 128, 1024), (100, 64, 256), (25, 32, 512))}

# a busy machine (--competitors): the single-layer (cell, T, B, H) timed beside busy processes,
# and the targets of issue 19 at 2 threads under load: at most this multiple of rnncore's own
# 1-thread time under the same load (and faster than torch's 2-thread time)
BUSY_CONFIGS = [c[:4] for c in CONFIGS if len(c) == 6 and c[0] in ("lstm", "gru")]
BUSY_TARGETS = {"own_one_thread": 1.3}

# the end-to-end language model against the same model in PyTorch (--lm)
LM = dict(embed=64, hidden=256, layers=2, batch=32, bptt=64, lr=2e-3, clip=1.0)
LM_TARGETS = {"lstm": 0.8, "gru": 0.6}  # rnncore / torch time per update (the training issue)
LM_CELLS = ("lstm", "gru")  # the --lm cells: torch.nn has a multi-layer module for each

# rnncore.torch's small model (--torch-bridge)
BRIDGE_MODEL = dict(vocab=96, embed=64, hidden=256, batch=32, seq_len=64, lr=2e-3, clip=1.0)

STEP_CONFIGS = [
    ("lstm", 1, 32, {"fwd_us": 3.0, "fb_us": 8.0}),
    ("lstm", 64, 256, {"gemm_ratio": 1.3}),
    ("gru", 1, 32, {}),
    ("gru", 64, 256, {}),
]
# the torch.nn class of each cell of STEP_CONFIGS, and whether its state is (h, c)
STEP_TWINS = {"lstm": ("LSTMCell", True), "gru": ("GRUCell", False)}

# the cost of recording ||dL/dh_t|| in backward (--grad-norms): (cell, T, B, H)
GRAD_NORM_CONFIGS = (("lstm", 100, 64, 256), ("lstm", 100, 1, 32), ("gru", 100, 16, 128))

# the per-call overhead of rnncore.torch (--torch-bridge) is measured on rnncore.torch.GRU: this
# is the registry cell of its C++ stack
OVERHEAD_CELL = "gru"

# the registry cell each torch loop of compare.py computes (a cell torch.nn has no module for)
TORCH_LOOP_CELLS = {"TorchPeepholeLSTM": "peephole_lstm"}
