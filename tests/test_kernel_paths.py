"""The fast paths of the C++ core against reference.py (float64), with no PyTorch: every
micro-kernel tail, one and two threads, bidirectional directions side by side, variable lengths,
workspaces reused across steps, and bitwise reproducibility, for every registry cell.

The sizes are chosen for the kernel's blocking: batch 1..9 and 17 cover every row-tile height
(full 8-row tiles plus each remainder), hidden sizes 1, 3, 17, 65 give panels with partial vector
lanes, and H = 65 with B = 17 is large enough for the two-thread time loop.
(test_core_paths.py runs the same paths against PyTorch for the cells torch.nn has.)
"""
import numpy as np
import pytest

import rnncore
from conftest import (CELLS, REF_NAMES, SIZES, has_cell_state, make_module, pack_state,
                      ref_params_of, state_tuple)
from rnncore.testing import reference

TOL = 1e-10  # float64: the core and the reference differ only in summation order


def run_against_reference(cell, T, B, I, H, threads, bidirectional=False, lengths=None, seed=0,
                          steps=1):
    """Training forward + backward of a one-layer module, and reference.py on the same weights
    and data, `steps` times through the same module (steps > 1: its workspaces are reused).
    Returns the largest absolute difference of each output and gradient over all steps."""
    rng = np.random.default_rng(seed)
    m = make_module(cell, I, H, bidirectional=bidirectional, dtype=np.float64, seed=seed)
    rnncore.set_num_threads(threads)
    D = 2 if bidirectional else 1
    n = 2 if has_cell_state(cell) else 1
    worst = {}

    def record(name, ours, ref):
        err = float(np.abs(ours - ref).max()) if np.size(ref) else 0.0
        worst[name] = max(worst.get(name, 0.0), err)

    for _ in range(steps):
        x = rng.standard_normal((T, B, I))
        s0 = [rng.standard_normal((D, B, H)) for _ in range(n)]
        wy = rng.standard_normal((T, B, D * H))
        ws = [rng.standard_normal((D, B, H)) for _ in range(n)]
        m.zero_grad()
        y, s_n = m(x, pack_state(cell, s0), lengths=lengths)
        dx, ds0 = m.backward(wy, pack_state(cell, ws))
        s_n, ds0 = state_tuple(cell, s_n), state_tuple(cell, ds0)
        dx_ref = np.zeros_like(x)
        for d in range(D):
            suffix = "_l0_reverse" if d else "_l0"
            p = ref_params_of(m, suffix)
            y_r, s_n_r, cache = reference.forward(cell, x, tuple(s[d] for s in s0), p,
                                                  reverse=bool(d), lengths=lengths)
            dx_r, ds0_r, dp_r = reference.backward(cache, wy[:, :, d * H:(d + 1) * H],
                                                   tuple(w[d] for w in ws))
            dx_ref += dx_r
            record(f"y{suffix}", y[:, :, d * H:(d + 1) * H], y_r)
            for k in range(n):
                record(f"state{k}_n{suffix}", s_n[k][d], s_n_r[k])
                record(f"dstate{k}_0{suffix}", ds0[k][d], ds0_r[k])
            for key, g in dp_r.items():
                if g is not None:
                    name = REF_NAMES[key] + suffix
                    record(name, m.grads[name], g)
        record("dx", dx, dx_ref)
    return worst


def assert_close(errs, context):
    name, err = max(errs.items(), key=lambda kv: kv[1])
    assert err < TOL, (context, name, err)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H", SIZES)
def test_every_row_tile_height_and_lane_tail(cell, H):
    for B in (1, 2, 3, 4, 5, 6, 7, 8, 9, 17):
        assert_close(run_against_reference(cell, T=3, B=B, I=5, H=H, threads=1), f"B={B}")


@pytest.mark.parametrize("cell", CELLS)
def test_two_threads_split_hidden_units(cell):
    # B * G * H^2 is large enough here for the thread-sliced time loop (and an odd H makes the
    # two slices unequal).
    assert_close(run_against_reference(cell, T=4, B=17, I=9, H=65, threads=2), "2 threads")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("H,threads", [(5, 2), (65, 2), (5, 1)])
def test_bidirectional_side_by_side_and_sequential_with_lengths(cell, H, threads):
    # H=5 with 2 threads: the two directions run concurrently, one thread each;
    # H=65: each direction uses both threads in turn; 1 thread: one after the other.
    lengths = np.array([4, 1, 3, 4, 0, 2, 4, 4])
    errs = run_against_reference(cell, T=4, B=8, I=6, H=H, threads=threads, bidirectional=True,
                                 lengths=lengths)
    assert_close(errs, (H, threads))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradients_through_the_packed_kernel(cell, threads):
    # N = sum(lengths) = 2,170 packed rows: above the packed weight-gradient threshold (256) and
    # more than one of its 2,048-row chunks; odd sizes give partial panels and tiles; ragged
    # lengths and both directions.
    lengths = np.resize(np.array([70, 63, 70, 41, 70, 69, 5, 70, 70, 0, 66]), 40)
    assert lengths.sum() > 2048
    errs = run_against_reference(cell, T=70, B=40, I=19, H=21, threads=threads,
                                 bidirectional=True, lengths=lengths)
    assert_close(errs, ("packed dW", threads))


@pytest.mark.parametrize("cell", CELLS)
def test_workspaces_reused_across_training_steps(cell):
    # Three training steps with different data through the same module: each backward must see
    # its own forward (the workspace memory is reused, its contents must not leak across steps).
    errs = run_against_reference(cell, T=5, B=3, I=4, H=6, threads=1, bidirectional=True,
                                 lengths=np.array([5, 2, 4]), steps=3)
    assert_close(errs, "reused workspaces")


def test_float32_two_threads_close_to_float64():
    rng = np.random.default_rng(3)
    m64 = rnncore.LSTM(33, 70, num_layers=2, dtype=np.float64, seed=1)
    m32 = rnncore.LSTM(33, 70, num_layers=2, dtype=np.float32)
    m32.load_state_dict(m64.state_dict())
    x = rng.standard_normal((6, 19, 33))
    dy = rng.standard_normal((6, 19, 70))
    rnncore.set_num_threads(2)
    y32, _ = m32(x)
    dx32, _ = m32.backward(dy)
    rnncore.set_num_threads(1)
    y64, _ = m64(x)
    dx64, _ = m64.backward(dy)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(dx32, dx64, atol=2e-6, rtol=1e-4)
    for k in m64.grads:
        np.testing.assert_allclose(m32.grads[k], m64.grads[k], atol=2e-5, rtol=1e-4, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_same_thread_count_is_bitwise_reproducible(cell):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 17, 40)).astype(np.float32)
    dy = rng.standard_normal((7, 17, 2 * 96)).astype(np.float32)
    rnncore.set_num_threads(2)
    results = []
    for _ in range(2):
        m = make_module(cell, 40, 96, bidirectional=True, seed=5)
        y, s_n = m(x)
        dx, ds0 = m.backward(dy)
        results.append([y, *state_tuple(cell, s_n), dx, *state_tuple(cell, ds0),
                        *(g.copy() for g in m.grads.values())])
    a, b = results
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
