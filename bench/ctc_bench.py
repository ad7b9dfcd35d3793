"""CTC loss + gradient: rnncore.ctc.ctc_loss against torch.nn.functional.ctc_loss (forward and
backward), in one process, on the same log-probabilities.

    python bench/ctc_bench.py [--T 200 --B 32 --C 30 --S 40 --threads 2 --blocks 15]

The values and gradients are checked equal first. Then blocks alternate between the two
(rnncore, torch, rnncore, ...), each block the median of `--reps` calls, and the medians of the
block times are reported with their ratio (lower is better for rnncore).

--encoders also times one training update of `rnncore train recognize` (forward, CTC,
backward, no optimiser step) with a plain bidirectional LSTM stack against the pyramid encoder
of the same depth, on the same batches, block-alternating: the pyramid's speed-up."""
import argparse
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=200)
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--C", type=int, default=30)
    ap.add_argument("--S", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--encoders", action="store_true", help="also time recognize's encoders")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()

    import torch

    import rnncore
    from rnncore.ctc import ctc_loss, log_softmax

    rnncore.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    T, B, C, S = args.T, args.B, args.C, args.S
    lp = log_softmax(rng.standard_normal((T, B, C)).astype(args.dtype))
    targets = rng.integers(1, C, size=(B, S))
    input_lengths = rng.integers(T * 3 // 4, T + 1, size=B)
    target_lengths = rng.integers(S * 3 // 4, S + 1, size=B)

    lp_t = torch.tensor(lp, requires_grad=True)
    tg_t, il_t, tl_t = map(torch.tensor, (targets, input_lengths, target_lengths))

    def run_rnncore():
        return ctc_loss(lp, targets, input_lengths, target_lengths)

    def run_torch():
        lp_t.grad = None
        loss = torch.nn.functional.ctc_loss(lp_t, tg_t, il_t, tl_t)
        loss.backward()
        return loss

    loss, grad = run_rnncore()
    loss_t = run_torch()
    tol = 1e-4 if args.dtype == "float32" else 1e-10
    np.testing.assert_allclose(loss, loss_t.item(), rtol=tol)
    np.testing.assert_allclose(grad, lp_t.grad.numpy(), rtol=tol, atol=tol)
    print(f"values equal: loss {loss:.6f} (torch {loss_t.item():.6f}), gradient max |diff| "
          f"{np.abs(grad - lp_t.grad.numpy()).max():.2e}")

    def block(fn):
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ours, theirs = [], []
    for _ in range(args.blocks):
        ours.append(block(run_rnncore))
        theirs.append(block(run_torch))
    a, b = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    print(f"CTC loss+gradient T={T} B={B} C={C} S={S} {args.dtype}, {args.threads} threads: "
          f"rnncore {a:.3f} ms, torch {b:.3f} ms, ratio {a / b:.2f} "
          f"(rnncore {rnncore.__version__}, torch {torch.__version__})")

    if args.encoders:
        for layers in args.layers:
            encoder_speedup(layers, args, block)


def encoder_speedup(layers, args, block):
    from rnncore.ctc import ctc_loss, log_softmax
    from rnncore.recognize import ALPHABET, Recognizer, make_batch

    rng = np.random.default_rng(1)
    batches = [make_batch(rng, 32, ALPHABET, 3, 10) for _ in range(4)]
    models = {name: Recognizer(hidden=96, layers=layers, pyramid=name == "pyramid")
              for name in ("plain", "pyramid")}

    def update(model):
        def run():
            for x, widths, labels, _ in batches:
                logits, lengths = model(x, widths)
                _, dlogits = ctc_loss(log_softmax(logits), labels, lengths, zero_infinity=True)
                model.zero_grad()
                model.backward(dlogits)
        return run

    times = {name: [] for name in models}
    for _ in range(args.blocks):
        for name, model in models.items():
            times[name].append(block(update(model)) / len(batches))
    plain, pyramid = (statistics.median(times[n]) * 1e3 for n in ("plain", "pyramid"))
    print(f"recognize update (batch 32, 3-10 characters, hidden 96), {layers} layers: plain "
          f"BiLSTM stack {plain:.2f} ms, pyramid {pyramid:.2f} ms, speed-up {plain / pyramid:.2f}x")


if __name__ == "__main__":
    main()
