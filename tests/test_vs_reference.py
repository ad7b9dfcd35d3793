"""The C++ core (through the public modules) against the float64 reference, for every cell,
dtype, direction and kind of initial state, at the odd sizes that hit vector tails."""
import numpy as np
import pytest

from conftest import CELLS, SIZES, make_module, module_params, state_tuple
from rnncore.testing import reference

TOL = {np.float64: (1e-12, 1e-10), np.float32: (2e-5, 2e-4)}  # atol, rtol


def close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=what)


def run_both(cell, dtype, T, B, I, H, reverse, random_state, rng, lengths=None):
    p = reference.init_params(cell, I, H, rng)
    # A bidirectional module's reverse half is the reverse direction: load the same weights in
    # both halves and compare the half that matches.
    m = make_module(cell, I, H, dtype=dtype, bidirectional=reverse)
    sd = module_params(p)
    if reverse:
        sd.update(module_params(p, "_l0_reverse"))
    m.load_state_dict(sd)
    D = 2 if reverse else 1
    x = rng.standard_normal((T, B, I))
    n_states = 2 if reference.has_cell_state(cell) else 1
    s0 = [rng.standard_normal((B, H)) if random_state else np.zeros((B, H))
          for _ in range(n_states)]
    dy_half = rng.standard_normal((T, B, H))
    ds = [rng.standard_normal((B, H)) for _ in range(n_states)]

    y_ref, sn_ref, cache = reference.forward(cell, x, tuple(s0), p, reverse=reverse, lengths=lengths)
    dx_ref, ds0_ref, dp_ref = reference.backward(cache, dy_half, tuple(ds))

    d = D - 1  # the direction under test
    stack = lambda a: np.stack([a] * D)  # same initial state for both halves
    hx = tuple(stack(s) for s in s0) if n_states == 2 else stack(s0[0])
    y, sn = m(x, hx, lengths=lengths)
    dy = np.zeros((T, B, D * H))
    dy[:, :, d * H:(d + 1) * H] = dy_half
    dsn = [np.zeros((D, B, H)) for _ in range(n_states)]
    for k in range(n_states):
        dsn[k][d] = ds[k]
    dx, ds0 = m.backward(dy, tuple(dsn) if n_states == 2 else dsn[0])

    close(y[:, :, d * H:(d + 1) * H], y_ref, dtype, "y")
    for k, (a, b) in enumerate(zip(state_tuple(cell, sn), sn_ref)):
        close(a[d], b, dtype, f"final state {k}")
    close(dx, dx_ref, dtype, "dx")
    for k, (a, b) in enumerate(zip(state_tuple(cell, ds0), ds0_ref)):
        close(a[d], b, dtype, f"gradient of initial state {k}")
    suffix = "_l0_reverse" if reverse else "_l0"
    for key, g in dp_ref.items():
        name = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                "w_peephole": "weight_peephole"}[key] + suffix
        close(m.grads[name], g, dtype, name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("random_state", [False, True])
def test_core_matches_reference(cell, dtype, reverse, random_state, rng):
    for H in SIZES:
        for B, I in ((1, 3), (3, 17), (17, 1)):
            run_both(cell, dtype, 4, B, I, H, reverse, random_state, rng)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_core_matches_reference_with_lengths(cell, reverse, rng):
    lengths = np.array([6, 0, 3, 6, 1, 4])
    for H in (3, 65):
        run_both(cell, np.float64, 6, 6, 5, H, reverse, True, rng, lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
def test_core_matches_reference_two_threads(cell, rng):
    import rnncore
    rnncore.set_num_threads(2)
    run_both(cell, np.float64, 5, 17, 9, 65, False, True, rng)
    run_both(cell, np.float32, 5, 33, 64, 130, True, True, rng)
