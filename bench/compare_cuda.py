"""rnncore's CUDA path against torch.nn (cuDNN) on the same GPU, side by side.

    python bench/compare_cuda.py                 # every registry cell with a torch.nn twin
    python bench/compare_cuda.py --only lstm --sizes 100x64x256 --dtype float64

For each cell and size (T x B x H, I = H, one layer): rnncore.torch's module on CUDA tensors and
torch.nn's from the same weights, after a check that outputs and gradients agree; then the median
of CUDA-event timings of the inference forward and of forward + backward. Needs a CUDA device,
torch with CUDA and rnncore built with its CUDA module (rnncore.cuda.cuda_status() says what is
missing). Not run on this project's machines, which have no GPU (docs/cuda.md).
"""
import argparse
import statistics
import sys


def timed(torch, fn, repeats):
    """Median milliseconds of fn() between two CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="registry cells (prefix match)")
    ap.add_argument("--sizes", nargs="+", default=["100x1x256", "100x64x256", "50x128x1024"],
                    help="T x B x H")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    import torch
    import rnncore
    import rnncore.torch as rt
    from rnncore.nn import registry as _registry
    from rnncore.testing.torch_twin import torch_twin

    if not (rnncore.cuda.cuda_available() and torch.cuda.is_available()):
        print(f"no GPU path here: {rnncore.cuda.cuda_status()}; torch CUDA: "
              f"{torch.cuda.is_available()}", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = False  # both sides in true float32
    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, {args.dtype}; {rnncore.cuda.cuda_status()}")
    print(f"{'cell':<18}{'T x B x H':>14}{'fwd ms':>10}{'cuDNN':>10}{'fwd+bwd ms':>12}"
          f"{'cuDNN':>10}{'ratio f/fb':>12}")
    for cell in _registry.CELLS:
        if args.only and not any(cell.startswith(p) for p in args.only):
            continue
        twin = torch_twin(cell)
        if twin is None:
            print(f"{cell:<18}  (torch.nn has no twin; compare with the CPU path instead)")
            continue
        cls, options = _registry.module_variant(cell)
        for size in args.sizes:
            T, B, H = (int(v) for v in size.split("x"))
            torch.manual_seed(0)
            theirs = twin[0](H, H, **twin[1]).to(device, dtype)
            ours = getattr(rt, cls.__name__)(H, H, **options).to(device, dtype)
            ours.load_state_dict(theirs.state_dict())
            x = torch.randn(T, B, H, device=device, dtype=dtype, requires_grad=True)
            outs = []
            for m in (ours, theirs):
                y, _ = m(x)
                g, = torch.autograd.grad(y.square().sum(), x)
                outs.append((y.detach(), g))
            tol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else {}
            torch.testing.assert_close(outs[0][0], outs[1][0], **tol)
            torch.testing.assert_close(outs[0][1], outs[1][1], **tol)

            def forward(m):
                with torch.no_grad():
                    m(x)

            def forward_backward(m):
                y, _ = m(x)
                y.backward(torch.ones_like(y))

            f = [timed(torch, lambda m=m: forward(m), args.repeats) for m in (ours, theirs)]
            fb = [timed(torch, lambda m=m: forward_backward(m), args.repeats)
                  for m in (ours, theirs)]
            print(f"{cell:<18}{size:>14}{f[0]:>10.3f}{f[1]:>10.3f}{fb[0]:>12.3f}{fb[1]:>10.3f}"
                  f"{f[0] / f[1]:>6.2f}/{fb[0] / fb[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
