"""The single-step engine behind the cells (_core.Step, cpp/include/rnncore/step.hpp): equal to a
one-step run of the sequence driver for every cell, split across threads or not, and its packed
weights kept exactly as long as the parameters have not changed."""
import numpy as np
import pytest

import rnncore
from rnncore._ext import core as _core
from rnncore.nn import registry as _registry
from conftest import CELLS, make_cell


def _params(cell, I, H, dtype, rng):
    info = _registry.CELLS[cell]
    G = info.gates
    p = {"weight_ih": rng.standard_normal((G * H, I)) * 0.4,
         "weight_hh": rng.standard_normal((G * H, H)) * 0.4,
         "bias_ih": rng.standard_normal(G * H), "bias_hh": rng.standard_normal(G * H)}
    if info.peephole_rows:
        p["weight_peephole"] = rng.standard_normal((info.peephole_rows, H))
    return {k: v.astype(dtype) for k, v in p.items()}


# (I, H, B): vector tails, a batch-1 step, and one large enough to be split across two threads
SHAPES = [(5, 7, 1), (3, 33, 4), (20, 48, 17), (64, 256, 64)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_step_equals_one_step_of_the_sequence_driver(cell, dtype, threads, rng):
    rnncore.set_num_threads(threads)
    states = 2 if _registry.CELLS[cell].has_cell_state else 1
    for I, H, B in SHAPES:
        p = _params(cell, I, H, dtype, rng)
        x, h, c, dh, dc = (rng.standard_normal((B, n)).astype(dtype) for n in (I, H, H, H, H))
        c_in, dc_in = (c, dc) if states == 2 else (None, None)
        stack = _core.Stack(cell, I, H, 1, False, dtype)
        pl = {k + "_l0": v for k, v in p.items()}
        _, h_ref, c_ref = stack.forward(x[None], pl, h[None], None if c_in is None else c[None],
                                        training=True)
        g_ref = {k: np.zeros_like(v) for k, v in pl.items()}
        dx_ref, dh_ref, dc_ref = stack.backward(None, pl, g_ref, dh[None],
                                                None if dc_in is None else dc[None])
        step = _core.Step(cell, I, H, dtype)
        step.set_weights(p)
        h1, c1, none = step.forward(x, h, c_in, training=False)
        assert none is None
        h2, c2, record = step.forward(x, h, c_in, training=True)
        g = {k: np.zeros_like(v) for k, v in p.items()}
        dx, dh_prev, dc_prev = step.backward(record, dh, dc_in, g)
        tol = 1e-12 if dtype == np.float64 else 3e-5
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
        for got in (h1, h2):
            close(got, h_ref[0])
        close(dx, dx_ref[0])
        close(dh_prev, dh_ref[0])
        if states == 2:
            close(c1, c_ref[0]), close(c2, c_ref[0]), close(dc_prev, dc_ref[0])
        else:
            assert c1 is None and c2 is None and dc_prev is None
        for k in p:
            close(g[k], g_ref[k + "_l0"])


def test_record_is_consumed_once_and_keeps_its_inputs(rng):
    step = _core.Step("lstm", 4, 6, np.float64)
    step.set_weights(_params("lstm", 4, 6, np.float64, rng))
    x, h, c = (rng.standard_normal((2, n)) for n in (4, 6, 6))
    g = {k: np.zeros_like(v) for k, v in _params("lstm", 4, 6, np.float64, rng).items()}
    _, _, record = step.forward(x, h, c, training=True)
    _, _, twin = step.forward(x.copy(), h.copy(), c.copy(), training=True)
    x[...] = 7.0  # the caller's arrays change after the step: the record kept copies
    h[...] = 7.0
    assert record.nbytes > 0 and not record.consumed
    out = step.backward(record, np.ones((2, 6)), None, g)
    ref = step.backward(twin, np.ones((2, 6)), None, {k: np.zeros_like(v) for k, v in g.items()})
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    assert record.consumed
    with pytest.raises(RuntimeError, match="already consumed"):
        step.backward(record, None, None, g)
    f32 = _core.Step("lstm", 4, 6, np.float32)
    f32.set_weights({k: v.astype(np.float32) for k, v in _params("lstm", 4, 6, np.float64,
                                                                  rng).items()})
    with pytest.raises(TypeError, match="another dtype"):
        f32.backward(twin, None, None, g)


def test_step_errors_name_the_argument(rng):
    step = _core.Step("gru", 3, 5, np.float32)
    with pytest.raises(RuntimeError, match="set_weights"):
        step.forward(np.zeros((1, 3), np.float32))
    p = _params("gru", 3, 5, np.float32, rng)
    with pytest.raises(KeyError, match="weight_hh"):
        step.set_weights({"weight_ih": p["weight_ih"]})
    with pytest.raises(ValueError, match=r"params\[weight_hh\] must have shape \(15, 5\)"):
        step.set_weights(dict(p, weight_hh=np.zeros((15, 4), np.float32)))
    step.set_weights(p)
    with pytest.raises(ValueError, match=r"x must have shape \(2, 3\), got \(2, 4\)"):
        step.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 5\)"):
        step.forward(np.zeros((2, 3), np.float32), np.zeros((1, 5), np.float32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        step.forward(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        _core.Step("gru", 3, 5, np.int32)
    with pytest.raises(ValueError, match="unknown cell 'gruu'"):
        _core.Step("gruu", 3, 5, np.float32)
    with pytest.raises(ValueError, match=r"seconds must be in \(0, 60\], got -1"):
        _core.fma_peak(1, -1.0)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        _core.fma_peak(-2)


# ---- the packed weights of a cell follow its parameters -------------------------------------

def _eval_step(cell, x, H):
    out = cell(x, None)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_cell_packs_once_for_many_steps(name, rng):
    cell = make_cell(name, 8, 16, dtype=np.float32, seed=0).eval()
    x = rng.standard_normal((3, 8)).astype(np.float32)
    first = _eval_step(cell, x, 16)
    for _ in range(50):
        np.testing.assert_array_equal(_eval_step(cell, x, 16), first)
    assert cell._engine.packs == 1


def test_every_way_parameters_change_reaches_the_packed_weights(rng):
    cell = rnncore.LSTMCell(6, 10, dtype=np.float64, seed=1)
    x = rng.standard_normal((2, 6))
    fresh = lambda: _eval_step(rnncore.LSTMCell(6, 10, dtype=np.float64, seed=1)
                               .load_state_dict(cell.state_dict()), x, 10)
    cell.eval()
    before = _eval_step(cell, x, 10)

    # an optimiser step
    cell.train()
    h, c = cell(x)
    cell.backward((np.ones_like(h), np.zeros_like(c)))
    rnncore.optim.SGD([cell], lr=0.5).step()
    cell.eval()
    after_sgd = _eval_step(cell, x, 10)
    assert not np.allclose(after_sgd, before)
    np.testing.assert_array_equal(after_sgd, fresh())

    # load_state_dict
    other = rnncore.LSTMCell(6, 10, dtype=np.float64, seed=2)
    cell.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(_eval_step(cell, x, 10), _eval_step(other.eval(), x, 10))

    # an array replaced in the params dict
    cell.params["weight_hh"] = cell.params["weight_hh"] * 0.5
    np.testing.assert_array_equal(_eval_step(cell, x, 10), fresh())

    # whole-array writes by hand, without telling anyone: caught by the probe
    cell.params["weight_ih"] *= 1.5
    np.testing.assert_array_equal(_eval_step(cell, x, 10), fresh())
    cell.params["bias_hh"][...] = 0.25
    np.testing.assert_array_equal(_eval_step(cell, x, 10), fresh())

    # a single element by hand: parameters_changed() is the documented way
    cell.params["weight_hh"][3, 4] += 1.0
    cell.parameters_changed()
    np.testing.assert_array_equal(_eval_step(cell, x, 10), fresh())
    cell.params["weight_hh"][5, 1] -= 2.0
    rnncore.parameters_changed()
    np.testing.assert_array_equal(_eval_step(cell, x, 10), fresh())


def test_training_steps_allocate_no_stack_and_track_their_records(rng):
    cell = rnncore.GRUCell(4, 8, seed=0)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    h = None
    for _ in range(6):
        h = cell(x, h)
    assert cell.pending_steps == 6 and cell._pending_bytes > 0
    for _ in range(6):
        _, dh = cell.backward(np.ones_like(h))
    assert cell.pending_steps == 0 and cell._pending_bytes == 0
    assert cell._engine.packs == 1
