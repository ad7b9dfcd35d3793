"""One decoder step at batch 64, H = 256: rnncore against torch.nn.LSTMCell in the same process.

    python bench/decoder_step.py [--batch 64] [--hidden 256] [--threads 2] [--blocks 15]

Timed, each as blocks of `--reps` calls that alternate between the contenders (so drifts of the
machine's speed hit both alike); the median per call over the blocks is reported:
  cell forward         rnncore.LSTMCell eval step  vs  torch LSTMCell under no_grad
  cell forward+backward  a training step and its backward  vs  torch forward + autograd backward
  seq2seq decoder step   rnncore.seq2seq's whole inference step (input feeding, the cell,
                         attention over S = 30 source positions, combine, output layer)
The cell's arithmetic is 2 * B * 4H * (I + H) FLOPs forward (I = H here, the input-fed width of
a decoder with embedding 0 is H); the FMA peak of the same run is printed beside it."""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def alternate(contenders, blocks, reps):
    """{name: median seconds per call} over `blocks` alternating blocks of `reps` calls."""
    times = {name: [] for name in contenders}
    for f in contenders.values():
        f()  # warm-up
    for _ in range(blocks):
        for name, f in contenders.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)

    import torch
    import rnncore
    from rnncore.seq2seq import Seq2Seq

    rnncore.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    B, H = args.batch, args.hidden
    I = H
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, I), dtype=np.float32)
    h = rng.standard_normal((B, H), dtype=np.float32)
    c = rng.standard_normal((B, H), dtype=np.float32)
    dh = rng.standard_normal((B, H), dtype=np.float32)

    ours = rnncore.LSTMCell(I, H, seed=0)
    ref = torch.nn.LSTMCell(I, H)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    xt, ht, ct, dht = (torch.from_numpy(a) for a in (x, h, c, dh))

    def ours_forward():
        with rnncore.no_grad():
            ours(x, (h, c))

    def torch_forward():
        with torch.no_grad():
            ref(xt, (ht, ct))

    zeros = np.zeros_like(dh)

    def ours_train():
        ours(x, (h, c))
        ours.backward((dh, zeros))

    xg = xt.clone().requires_grad_(True)

    def torch_train():
        h1, _ = ref(xg, (ht, ct))
        h1.backward(dht)

    # the whole seq2seq decoder step (inference) at the same width: embedding H/2 so the
    # input-fed cell sees I = H/2 + H
    s2s = Seq2Seq(40, 40, embed=H // 2, hidden=H, seed=0)
    S = 30
    src = rng.integers(3, 40, (S, B))
    memory, (h0, c0), _ = s2s.encode(src)
    step = s2s._decoder(memory)
    state = (h0, c0, np.zeros((B, H), dtype=np.float32))
    tokens = rng.integers(3, 40, B)

    def seq2seq_step():
        with rnncore.no_grad():
            step(tokens, state)

    # the FMA peak of this run: a large square GEMM through the core
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    t = alternate({"gemm": lambda: rnncore._core.matmul(a, a)}, 5, 5)["gemm"]
    peak = 2 * 1024 ** 3 / t / 1e9

    fwd = alternate({"rnncore": ours_forward, "torch": torch_forward}, args.blocks, args.reps)
    trn = alternate({"rnncore": ours_train, "torch": torch_train}, args.blocks, args.reps)
    s2s_t = alternate({"seq2seq": seq2seq_step}, args.blocks, args.reps)["seq2seq"]
    flops = 2 * B * 4 * H * (I + H)
    print(f"decoder step, batch {B}, H = {H}, I = {I}, {args.threads} threads, float32 "
          f"(rnncore {rnncore.__version__}, torch {torch.__version__}); "
          f"1024^3 GEMM through the core: {peak:.0f} GFLOP/s")
    print(f"{'':24s}{'rnncore us':>12s}{'torch us':>12s}{'torch/rnncore':>15s}"
          f"{'rnncore GFLOP/s':>17s}")
    for name, r, mult in (("LSTMCell forward", fwd, 1), ("LSTMCell fwd+bwd", trn, 3)):
        print(f"{name:24s}{r['rnncore'] * 1e6:12.1f}{r['torch'] * 1e6:12.1f}"
              f"{r['torch'] / r['rnncore']:15.2f}{mult * flops / r['rnncore'] / 1e9:17.1f}")
    # its GEMM arithmetic: the cell (I = H/2 + H), the general score's W^T q, scores and
    # context over S keys of width 2H, combine (3H -> H), output (H -> 40)
    s2s_flops = 2 * B * (4 * H * (H // 2 + 2 * H) + H * 2 * H + 2 * S * 2 * H + 3 * H * H
                         + 40 * H)
    print(f"{'seq2seq decoder step':24s}{s2s_t * 1e6:12.1f}{'':12s}{'':15s}"
          f"{s2s_flops / s2s_t / 1e9:17.1f}   (cell I = {H // 2 + H}, attention over S = {S}, "
          f"combine, output 40)")


if __name__ == "__main__":
    main()
