"""Single-step cells never compute with stale weights (issue 20, item 1): whatever is done to the
parameter arrays between steps (ordinary edits written in place with numpy, a torch optimiser
on a tensor sharing their memory, the params dict rebound), the next step gives what a freshly
built cell with the same weights gives: the new state, and in training mode dx, dstate and the
parameter gradients of the step's backward.

The edits leave untouched the values the old step engine's probe sampled (8 evenly spaced values
per array), so that each of them is one the probe could not see: the cases the issue found
stale. None of them calls rnncore.parameters_changed()."""
import copy
from collections import OrderedDict

import numpy as np
import pytest

from rnncore.nn import registry
from conftest import CELLS, has_cell_state, make_cell

I, H = 16, 24
PROBES = 8  # the old probe: values per array


def _probed(a):
    n = a.size
    return np.array([i * (n - 1) // (PROBES - 1) for i in range(PROBES)])


def _hide_from_probe(before, params):
    """Restores the values the old probe sampled, so that only a full comparison sees the edit."""
    for k, a in params.items():
        flat = a.reshape(-1)
        idx = _probed(a)
        flat[idx] = before[k].reshape(-1)[idx]


def _gates(cell):
    return registry.CELLS[cell].gates  # (building a cell would move the parameter version)


def edit_row(params, rng, cell):
    w = params["weight_hh"]
    w[5] = rng.standard_normal(w.shape[1])


def edit_column(params, rng, cell):
    params["weight_ih"][:, 3] = 0


def edit_ablate_unit(params, rng, cell):
    unit = 7
    rows = [g * H + unit for g in range(_gates(cell))]
    params["weight_ih"][rows] = 0
    params["weight_hh"][rows] = 0
    params["weight_hh"][:, unit] = 0
    for b in ("bias_ih", "bias_hh"):
        if b in params:
            params[b][rows] = 0


def _prune(fraction):
    def edit(params, rng, cell):
        w = params["weight_hh"]
        k = max(1, round(fraction * w.size))
        smallest = np.argsort(np.abs(w), axis=None)[:k]
        w.reshape(-1)[smallest] = 0
    return edit


def _clip(percentile):
    def edit(params, rng, cell):
        for k in ("weight_ih", "weight_hh"):
            w = params[k]
            t = np.percentile(np.abs(w), percentile)
            np.clip(w, -t, t, out=w)
    return edit


def edit_max_norm(params, rng, cell):
    for k in ("weight_ih", "weight_hh"):
        w = params[k]
        norms = np.linalg.norm(w, axis=1)
        limit = np.median(norms)
        w *= np.minimum(1.0, limit / norms)[:, None].astype(w.dtype)


def edit_torch_sgd(params, rng, cell):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(params["weight_hh"]).requires_grad_(True)  # shares the memory
    t.grad = torch.zeros_like(t)
    t.grad[4] = torch.from_numpy(rng.standard_normal(t.shape[1]).astype(params["weight_hh"].dtype))
    torch.optim.SGD([t], lr=0.5).step()


EDITS = {
    "one row": edit_row,
    "column zeroed": edit_column,
    "unit ablated": edit_ablate_unit,
    "pruned 1%": _prune(0.01),
    "pruned 5%": _prune(0.05),
    "pruned 20%": _prune(0.20),
    "clipped at 99th percentile": _clip(99),
    "clipped at 90th percentile": _clip(90),
    "max-norm rows": edit_max_norm,
    "torch SGD, one row's gradient": edit_torch_sgd,
}


def _inputs(cell, rng, B=3):
    x = rng.standard_normal((B, I)).astype(np.float32)
    states = [rng.standard_normal((B, H)).astype(np.float32) for _ in range(2)]
    if has_cell_state(cell):
        return x, tuple(states), tuple(s * 0.5 for s in states)
    return x, states[0], states[1] * 0.5


def _warm(c, x, state, dstate):
    """Steps that make the engine pack its forward and backward forms of the weights."""
    c.train()
    c(x, state)
    c.backward(dstate)
    c.zero_grad()


def _cell(cell, seed):
    """A cell with random weights (also rnn_relu, whose identity init is mostly zeros)."""
    c = make_cell(cell, I, H)
    r = np.random.default_rng(seed)
    c.load_state_dict({k: r.uniform(-0.4, 0.4, v.shape) for k, v in c.params.items()})
    return c


def _fresh(cell, params):
    f = make_cell(cell, I, H)
    f.load_state_dict({k: v.copy() for k, v in params.items()})
    return f


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _expected(cell, params, x, state, dstate):
    """What a freshly built cell with these weights computes: the eval step, and the training
    step with its backward (dx, dstate, grads). Computed before the cells under test are edited:
    building a cell moves rnncore's parameter version, which would hide an edit from them."""
    f = _fresh(cell, params)
    ev = _flat(f.eval()(x, state))
    f.train()
    tr = _flat(f(x, state))
    dx, ds = f.backward(dstate)
    return ev, tr + [dx] + _flat(ds), {k: g.copy() for k, g in f.grads.items()}


def _check(c, t, x, state, dstate, expected):
    """c (eval) and t (training) hold the edited weights: their next steps equal a fresh cell's."""
    ev, tr, grads = expected
    t.zero_grad()
    for got, exp in zip(_flat(c(x, state)), ev):
        np.testing.assert_array_equal(got, exp, err_msg="eval step used stale weights")
    got = _flat(t(x, state))
    dx, ds = t.backward(dstate)
    for a, b in zip(got + [dx] + _flat(ds), tr):
        np.testing.assert_array_equal(a, b, err_msg="training step used stale weights")
    for k in grads:
        np.testing.assert_array_equal(t.grads[k], grads[k], err_msg=f"grads[{k}] stale")


def _edited(cell, params, edit):
    """The edit applied to copies of params (what the cells under test will hold)."""
    before = {k: v.copy() for k, v in params.items()}
    after = {k: v.copy() for k, v in params.items()}
    EDITS[edit](after, np.random.default_rng(7), cell)
    _hide_from_probe(before, after)
    assert any(not np.array_equal(before[k], after[k]) for k in before), "edit did nothing"
    return after


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("cell", CELLS)
def test_in_place_edit_is_seen_by_the_next_step(cell, edit, rng):
    x, state, dstate = _inputs(cell, rng)
    c = _cell(cell, 3).eval()
    t = _cell(cell, 3)
    expected = _expected(cell, _edited(cell, c.params, edit), x, state, dstate)
    c(x, state)
    _warm(t, x, state, dstate)
    for m in (c, t):  # no rnncore call between the warm steps and these edits
        before = {k: v.copy() for k, v in m.params.items()}
        EDITS[edit](m.params, np.random.default_rng(7), cell)
        _hide_from_probe(before, m.params)
    _check(c, t, x, state, dstate, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_rebinding_params_is_seen_by_the_next_step(cell, rng):
    x, state, dstate = _inputs(cell, rng)
    c = _cell(cell, 3).eval()
    t = _cell(cell, 3)
    half = {k: v * np.float32(0.5) for k, v in c.params.items()}
    expected = _expected(cell, half, x, state, dstate)
    edited = {k: v.copy() for k, v in half.items()}
    edited["weight_hh"][2] += 1
    expected_after_edit = _expected(cell, edited, x, state, dstate)
    c(x, state)
    _warm(t, x, state, dstate)
    news = []
    for m in (c, t):
        new = OrderedDict((k, v.copy()) for k, v in half.items())
        m.params = new
        news.append(new)
    _check(c, t, x, state, dstate, expected)
    # the rebound arrays are the live ones: an edit in place of the caller's array shows
    for new in news:
        new["weight_hh"][2] += 1
    _check(c, t, x, state, dstate, expected_after_edit)


@pytest.mark.parametrize("cell", CELLS)
def test_edit_between_steps_of_one_sequence(cell, rng):
    """Inference after pruning stays right at every later step, not only the first."""
    x, state, _ = _inputs(cell, rng)
    c = _cell(cell, 1).eval()
    w = c.params["weight_hh"].copy()
    w[np.abs(w) < np.quantile(np.abs(w), 0.3)] = 0
    _hide_from_probe({"w": c.params["weight_hh"]}, {"w": w})
    f = _fresh(cell, dict(c.params, weight_hh=w)).eval()
    for _ in range(3):
        state = c(x, state)
    c.params["weight_hh"][...] = w
    s_c = s_f = state
    for _ in range(4):
        s_c, s_f = c(x, s_c), f(x, s_f)
        for a, b in zip(_flat(s_c), _flat(s_f)):
            np.testing.assert_array_equal(a, b)


def test_unchanged_weights_are_not_repacked(rng):
    """The check costs a comparison, not a repack: steps with unchanged weights reuse the packs."""
    c = _cell("lstm", 0).eval()
    x = rng.standard_normal((2, I)).astype(np.float32)
    c(x)
    packs = c._engine.packs
    for _ in range(5):
        c(x)
    assert c._engine.packs == packs
    c.params["bias_hh"][0] += 1
    c(x)
    assert c._engine.packs == packs + 1


def _apply(params, edit):
    """edit(params) in place, hidden from the old probe."""
    before = {k: v.copy() for k, v in params.items()}
    edit(params)
    _hide_from_probe(before, params)


def _zero_column(p):
    p["weight_ih"][:, 1] = 0


def _double_row(p):
    p["weight_hh"][3] *= 2


@pytest.mark.parametrize("cell", CELLS)
def test_replaced_array_then_edited_in_place(cell, rng):
    """A parameter array replaced by the caller's own array (no longer one buffer with the
    others), then that array edited in place: seen too; and so is an edit after a copy."""
    x, state, dstate = _inputs(cell, rng)
    c = _cell(cell, 3).eval()
    t = _cell(cell, 3)
    edited = {k: v.copy() for k, v in c.params.items()}
    _apply(edited, _zero_column)
    expected = _expected(cell, edited, x, state, dstate)
    mine = [c.params["weight_ih"].copy(), t.params["weight_ih"].copy()]
    c.params["weight_ih"], t.params["weight_ih"] = mine
    c(x, state)
    _warm(t, x, state, dstate)
    for m, a in zip((c, t), mine):
        _apply({"weight_ih": a}, _zero_column)
        assert m.params["weight_ih"] is a
    _check(c, t, x, state, dstate, expected)
    c2, t2 = copy.deepcopy(c), copy.deepcopy(t)
    _apply(edited, _double_row)
    expected = _expected(cell, edited, x, state, dstate)
    c2(x, state)
    _warm(t2, x, state, dstate)
    for m in (c2, t2):
        _apply(m.params, _double_row)
    _check(c2, t2, x, state, dstate, expected)
