"""The fast paths of the C++ core against PyTorch 2.13 (float64), for the registry cells torch.nn
also computes (conftest.torch_twin): every micro-kernel tail, one and two threads, bidirectional
directions side by side, and workspaces reused across steps. Skipped without torch;
test_kernel_paths.py covers the same paths for every cell against reference.py.

The sizes are chosen for the kernel's blocking: batch 1..9 and 17 cover every row-tile height
(full 8-row tiles plus each remainder), hidden sizes 1, 3, 17, 65 give panels with partial vector
lanes, and H = 65 with B = 17 is large enough for the two-thread time loop.
"""
import numpy as np
import pytest

import rnncore
from conftest import cells_with_torch_twin, has_cell_state, make_module, torch_twin

torch = pytest.importorskip("torch", reason="PyTorch 2.13 is the oracle of these tests")

TORCH_CELLS = cells_with_torch_twin()


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    rnncore.set_num_threads(0)


def run_pair(cell, T, B, I, H, threads, bidirectional=False, lengths=None, seed=0, steps=1):
    """Forward + backward in rnncore and torch on the same weights and data; returns the maximal
    absolute differences of (y, final states, dx, initial-state grads, parameter grads)."""
    torch_cls, kw = torch_twin(cell)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tm = torch_cls(I, H, bidirectional=bidirectional, dtype=torch.float64, **kw)
    m = make_module(cell, I, H, bidirectional=bidirectional, dtype=np.float64)
    m.load_state_dict(tm.state_dict())
    rnncore.set_num_threads(threads)
    D = 2 if bidirectional else 1
    lstm = has_cell_state(cell)
    for _ in range(steps):  # steps > 1: the module's workspaces are reused
        x = rng.standard_normal((T, B, I))
        h0 = rng.standard_normal((D, B, H))
        c0 = rng.standard_normal((D, B, H))
        wy = rng.standard_normal((T, B, D * H))
        wh = rng.standard_normal((D, B, H))
        wc = rng.standard_normal((D, B, H))
        m.zero_grad()
        y, st = m(x, (h0, c0) if lstm else h0, lengths=lengths)
        dx, dst = m.backward(wy, (wh, wc) if lstm else wh)

        xt = torch.tensor(x, requires_grad=True)
        h0t = torch.tensor(h0, requires_grad=True)
        c0t = torch.tensor(c0, requires_grad=True)
        tm.zero_grad()
        if lengths is not None:
            packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                             enforce_sorted=False)
            yt, stt = tm(packed, (h0t, c0t) if lstm else h0t)
            yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
        else:
            yt, stt = tm(xt, (h0t, c0t) if lstm else h0t)
        hnt = stt[0] if lstm else stt
        loss = (yt * torch.tensor(wy)).sum() + (hnt * torch.tensor(wh)).sum()
        if lstm:
            loss = loss + (stt[1] * torch.tensor(wc)).sum()
        loss.backward()

    def diff(a, b):
        return float(np.abs(np.asarray(a) - b.detach().numpy()).max()) if np.size(a) else 0.0

    hn, dh0 = (st[0], dst[0]) if lstm else (st, dst)
    out = {"y": diff(y, yt), "h_n": diff(hn, hnt), "dx": diff(dx, xt.grad),
           "dh0": diff(dh0, h0t.grad)}
    if lstm:
        out["c_n"] = diff(st[1], stt[1])
        out["dc0"] = diff(dst[1], c0t.grad)
    for name, p in tm.named_parameters():
        out[name] = diff(m.grads[name], p.grad)
    return out


@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("H", [1, 3, 17, 65])
def test_every_row_tile_height_and_lane_tail(cell, H):
    for B in (1, 2, 3, 4, 5, 6, 7, 8, 9, 17):
        errs = run_pair(cell, T=3, B=B, I=5, H=H, threads=1)
        worst = max(errs.items(), key=lambda kv: kv[1])
        assert worst[1] < 1e-11, (B, worst)


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_two_threads_split_hidden_units(cell):
    # B * G * H^2 is large enough here for the thread-sliced time loop (and an odd H makes the
    # two slices unequal).
    errs = run_pair(cell, T=4, B=17, I=9, H=65, threads=2)
    assert max(errs.values()) < 1e-11, errs


@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("H,threads", [(5, 2), (65, 2), (5, 1)])
def test_bidirectional_side_by_side_and_sequential(cell, H, threads):
    # H=5 with 2 threads: the two directions run concurrently, one thread each;
    # H=65: each direction uses both threads in turn; 1 thread: one after the other.
    lengths = np.array([4, 1, 3, 4, 2, 4, 4])
    errs = run_pair(cell, T=4, B=7, I=6, H=H, threads=threads, bidirectional=True,
                    lengths=lengths)
    assert max(errs.values()) < 1e-11, errs


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_workspaces_reused_across_training_steps(cell):
    # Three training steps with different data through the same module: each backward must see
    # its own forward (the workspace memory is reused, its contents must not leak across steps).
    errs = run_pair(cell, T=5, B=3, I=4, H=6, threads=1, bidirectional=True, steps=3)
    assert max(errs.values()) < 1e-11, errs
