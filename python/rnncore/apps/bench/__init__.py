"""rnncore side by side with PyTorch (and onnxruntime for inference), in one process.

    rnncore bench                                 # all configs, 1 and 2 threads
    rnncore bench --quick --only lstm             # a fast smoke run
    rnncore bench --markdown bench/RESULTS.md
    rnncore bench --memory                        # inference memory vs T, training workspace
(`python bench/compare.py ...` is the same from a source checkout.)

Runs alternate between the libraries in blocks (rnncore, torch, rnncore, ...; a short pause
before each block lets the other runtime's spinning threads go idle), and each time is the
median of all runs. float32, input_size = hidden_size. "fwd" is inference
(rnncore in eval mode, torch under no_grad); "fwd+bwd" a training forward plus backward with a
random output gradient (torch: autograd with requires_grad input). Ratios are rnncore / other:
lower is better for rnncore. GFLOP/s counts the GEMM work only: forward 2*T*B*G*H*(I+H), backward
twice that.

Before timing a config, its rnncore module (built by rnncore.nn.registry.make_module) and its
torch counterpart (the torch.nn class the tests' rule in rnncore/testing/torch_twin.py picks, or the torch
loop written for a cell torch lacks) run once on the same weights and data; outputs and
gradients must agree within float32 tolerance, or the run stops with a message.

The jobs, one module each: compare (the default: CONFIGS against torch and onnxruntime, and the
Markdown table), memory (--memory), lm (--lm), grad_norms (--grad-norms), bridge
(--torch-bridge), steps (--steps), busy (--competitors); configs holds what they measure, common what they share.
"""
from __future__ import annotations

import argparse
import os

from rnncore.apps.bench.bridge import run_torch_bridge
from rnncore.apps.bench.busy import run_busy
from rnncore.apps.bench.common import fma_peaks, machine, median_times, repeats_for
from rnncore.apps.bench.compare import run_comparison, write_markdown
from rnncore.apps.bench.configs import CONFIGS, LM_CELLS, STEP_CONFIGS
from rnncore.apps.bench.grad_norms import run_grad_norm_cost
from rnncore.apps.bench.lm import run_lm
from rnncore.apps.bench.memory import memory
from rnncore.apps.bench.steps import run_steps

__all__ = ["CONFIGS", "STEP_CONFIGS", "add_arguments", "fma_peaks", "machine", "main",
           "median_times", "memory", "repeats_for", "run", "run_comparison",
           "run_grad_norm_cost", "run_lm", "run_steps", "run_torch_bridge", "write_markdown"]


def add_arguments(ap):
    ap.add_argument("--quick", action="store_true", help="few repeats, skip H=1024")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", nargs="+", help="registry cells to run (prefix match): lstm gru rnn peephole")
    ap.add_argument("--markdown", help="write a Markdown table here")
    ap.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime comparison")
    ap.add_argument("--memory", action="store_true", help="memory measurements only")
    ap.add_argument("--lm", action="store_true", help="only the end-to-end language-model "
                    "training against the same model in PyTorch")
    ap.add_argument("--lm-steps", type=int, default=200, help="updates per library (--lm)")
    ap.add_argument("--lm-cells", nargs="+", default=list(LM_CELLS), choices=list(LM_CELLS))
    ap.add_argument("--lm-chars", type=int, default=600_000, help="corpus characters (--lm)")
    ap.add_argument("--grad-norms", action="store_true",
                    help="only the cost of recording ||dL/dh_t|| in backward")
    ap.add_argument("--steps", action="store_true",
                    help="only single cell steps (LSTMCell/GRUCell) vs torch and their GEMM alone")
    ap.add_argument("--competitors", type=int, nargs="+", metavar="N",
                    help="only the busy-machine comparison: N busy processes beside each run "
                    "(e.g. --competitors 1 2), rnncore and torch at 1 and 2 threads")
    ap.add_argument("--torch-bridge", action="store_true",
                    help="only rnncore.torch: its per-call overhead, the configs through it vs "
                    "torch.nn, and a small embedding + GRU + linear model's training step")


def run(args, error=None):
    if args.memory:
        memory()
        return 0
    if args.lm:
        run_lm(args)
        return 0
    if args.grad_norms:
        run_grad_norm_cost(args)
        return 0
    if args.torch_bridge:
        run_torch_bridge(args)
        return 0
    if args.steps:
        run_steps(args)
        return 0
    if args.competitors:
        return 1 if run_busy(args) else 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rows = run_comparison(args)
    if args.markdown:
        write_markdown(rows, args.markdown, args)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="rnncore bench", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args, ap.error)
