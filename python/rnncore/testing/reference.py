"""Float64 numpy reference: every cell written straight from its equations, with hand-derived
backpropagation through time. It is the readable specification of what rnncore computes and the
oracle its tests compare the C++ core against. Plain loops over time; nothing here is fast.

Notation (time-major): x (T, B, I); states h, c (B, H); gate blocks of the weights in PyTorch's
order and layout, w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H):

  rnn_tanh / rnn_relu   h = act(W_ih x + b_ih + W_hh h_prev + b_hh)
  lstm                  gates [i, f, g, o]:  i, f, o = sigmoid(.), g = tanh(.)
                        c = f * c_prev + i * g;  h = o * tanh(c)
  peephole_lstm         as lstm, with w_peephole (3, H) rows [p_i, p_f, p_o]:
                        i = sigmoid(a_i + p_i * c_prev), f = sigmoid(a_f + p_f * c_prev),
                        o = sigmoid(a_o + p_o * c)   (the output gate sees the NEW c)
  gru                   gates [r, z, n]:  r, z = sigmoid(.)
                        n = tanh(W_in x + b_in + r * (W_hn h_prev + b_hn))      (reset after)
                        h = (1 - z) * n + z * h_prev
  gru_reset_before      n = tanh(W_in x + b_in + W_hn (r * h_prev) + b_hn)     (Cho et al. 2014)

Variable lengths: sequence b has steps t < lengths[b]; outputs past it are zero; its final state
is the state after its last step. The reverse direction processes t = lengths[b]-1 down to 0
(each sequence starts at its own last valid step) and writes y at the original positions.

Each cell family has one forward-step and one backward-step function, side by side; the table
`STEPS` at the end names every cell with its step functions and its shape (gates, states,
peephole rows). `CELLS`, `num_gates`, `has_cell_state` and `init_params` read the table, and
tests/test_registry.py checks it against the C++ registry (cpp/include/rnncore/cells.hpp).
This module never imports the C++ core: it is the independent oracle.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import numpy as np


def sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


def _bias(p, key):
    """A bias vector, zeros for a layer without biases."""
    return np.zeros(p["w_hh"].shape[0]) if p[key] is None else p[key]


# ---- shared by every cell: the affine maps into the gates and their gradients ---------------
def _input_side_backward(x_t, da, p, grads):
    """Backward of a = x_t W_ih^T + b_ih (all gates): adds dW_ih, db_ih; returns dx_t."""
    grads["w_ih"] += da.T @ x_t
    if grads["b_ih"] is not None:
        grads["b_ih"] += da.sum(0)
    return da @ p["w_ih"]


def _recurrent_backward(operand, da, p, grads, rows=slice(None)):
    """Backward of a[:, rows] = operand W_hh[rows]^T + b_hh[rows]: adds those rows' dW_hh and
    db_hh; returns the gradient of the operand."""
    grads["w_hh"][rows] += da.T @ operand
    if grads["b_hh"] is not None:
        grads["b_hh"][rows] += da.sum(0)
    return da @ p["w_hh"][rows]


# ---- vanilla RNN: h = act(W_ih x + b_ih + W_hh h_prev + b_hh) -------------------------------
# act and its derivative, written in terms of the output h = act(a)
ACTIVATIONS = {
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "relu": (lambda a: np.maximum(a, 0.0), lambda h: (h > 0).astype(np.float64)),
}


def rnn_forward(x_t, state, p, act):
    (h_prev,) = state
    a = x_t @ p["w_ih"].T + _bias(p, "b_ih") + h_prev @ p["w_hh"].T + _bias(p, "b_hh")
    h = ACTIVATIONS[act][0](a)
    return (h,), {"h_prev": h_prev, "h": h}


def rnn_backward(x_t, rec, dstate, p, grads, act):
    (dh,) = dstate
    da = dh * ACTIVATIONS[act][1](rec["h"])
    dh_prev = _recurrent_backward(rec["h_prev"], da, p, grads)
    return _input_side_backward(x_t, da, p, grads), (dh_prev,)


# ---- LSTM, gates [i, f, g, o], optionally with diagonal peepholes [p_i, p_f, p_o] ------------
def lstm_forward(x_t, state, p, peephole):
    h_prev, c_prev = state
    H = h_prev.shape[1]
    a = x_t @ p["w_ih"].T + _bias(p, "b_ih") + h_prev @ p["w_hh"].T + _bias(p, "b_hh")
    a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
    if peephole:
        w = p["w_peephole"]
        a_i = a_i + w[0] * c_prev
        a_f = a_f + w[1] * c_prev
    i, f, g = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g)
    c = f * c_prev + i * g
    if peephole:
        a_o = a_o + p["w_peephole"][2] * c  # the output gate sees the new c
    o = sigmoid(a_o)
    h = o * np.tanh(c)
    return (h, c), {"h_prev": h_prev, "c_prev": c_prev, "i": i, "f": f, "g": g, "o": o, "c": c}


def lstm_backward(x_t, rec, dstate, p, grads, peephole):
    dh, dc = dstate
    i, f, g, o, c, c_prev = rec["i"], rec["f"], rec["g"], rec["o"], rec["c"], rec["c_prev"]
    tc = np.tanh(c)
    da_o = dh * tc * o * (1.0 - o)
    dct = dc + dh * o * (1.0 - tc * tc)
    if peephole:
        dct = dct + p["w_peephole"][2] * da_o
    da_i = dct * g * i * (1.0 - i)
    da_f = dct * c_prev * f * (1.0 - f)
    da_g = dct * i * (1.0 - g * g)
    dc_prev = dct * f
    if peephole:
        w = p["w_peephole"]
        dc_prev = dc_prev + w[0] * da_i + w[1] * da_f
        grads["w_peephole"][0] += (da_i * c_prev).sum(0)
        grads["w_peephole"][1] += (da_f * c_prev).sum(0)
        grads["w_peephole"][2] += (da_o * c).sum(0)
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    dh_prev = _recurrent_backward(rec["h_prev"], da, p, grads)
    return _input_side_backward(x_t, da, p, grads), (dh_prev, dc_prev)


# ---- GRU, gates [r, z, n], h = (1 - z) * n + z * h_prev -------------------------------------
#   reset_after:  n = tanh(W_in x + b_in + r * (W_hn h_prev + b_hn))
#   reset_before: n = tanh(W_in x + b_in + W_hn (r * h_prev) + b_hn)
def gru_forward(x_t, state, p, reset_after):
    (h_prev,) = state
    H = h_prev.shape[1]
    w_hh, b_hh = p["w_hh"], _bias(p, "b_hh")
    gx = x_t @ p["w_ih"].T + _bias(p, "b_ih")           # input side of every gate
    gh_rz = h_prev @ w_hh[:2 * H].T + b_hh[:2 * H]
    r = sigmoid(gx[:, :H] + gh_rz[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh_rz[:, H:])
    rec = {"h_prev": h_prev, "r": r, "z": z}
    if reset_after:
        rec["hn"] = h_prev @ w_hh[2 * H:].T + b_hh[2 * H:]   # W_hn h_prev + b_hn
        n = np.tanh(gx[:, 2 * H:] + r * rec["hn"])
    else:
        rec["rh"] = r * h_prev
        n = np.tanh(gx[:, 2 * H:] + rec["rh"] @ w_hh[2 * H:].T + b_hh[2 * H:])
    rec["n"] = n
    h = (1.0 - z) * n + z * h_prev
    return (h,), rec


def gru_backward(x_t, rec, dstate, p, grads, reset_after):
    (dh,) = dstate
    h_prev, r, z, n = rec["h_prev"], rec["r"], rec["z"], rec["n"]
    H = h_prev.shape[1]
    da_n = dh * (1.0 - z) * (1.0 - n * n)
    da_z = dh * (h_prev - n) * z * (1.0 - z)
    dh_prev = dh * z
    if reset_after:
        da_r = da_n * rec["hn"] * r * (1.0 - r)
        # the recurrent product of n is scaled by r: its rows see da_n * r
        da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
        dh_prev = dh_prev + _recurrent_backward(h_prev, da_h, p, grads)
    else:
        # the n rows of W_hh multiply r * h_prev; the r, z rows multiply h_prev
        d_rh = _recurrent_backward(rec["rh"], da_n, p, grads, rows=slice(2 * H, 3 * H))
        da_r = d_rh * h_prev * r * (1.0 - r)
        dh_prev = dh_prev + d_rh * r
        dh_prev = dh_prev + _recurrent_backward(h_prev, np.concatenate([da_r, da_z], axis=1),
                                                p, grads, rows=slice(0, 2 * H))
    da_x = np.concatenate([da_r, da_z, da_n], axis=1)
    return _input_side_backward(x_t, da_x, p, grads), (dh_prev,)


# ---- the table of cells ----------------------------------------------------------------------
class Step(NamedTuple):
    """A cell: its step functions and the shape facts everything else reads.

    forward(x_t, state, p) -> (new state, record): one step for a batch of rows; state is (h,)
        or (h, c), each (rows, H); the record keeps what backward needs.
    backward(x_t, record, dstate, p, grads) -> (dx_t, dstate_prev): dstate is the gradient
        w.r.t. the step's new state; adds the parameter gradients into grads.
    """
    forward: Callable
    backward: Callable
    gates: int           # G: gate blocks of w_ih, w_hh, b_ih, b_hh
    states: int          # 1 (h) or 2 (h, c)
    peephole_rows: int   # rows of w_peephole (3, H), or 0 for none


def _cell(forward, backward, gates, states, peephole_rows=0, **options):
    return Step(partial(forward, **options), partial(backward, **options), gates, states,
                peephole_rows)


# The cells, in the order of the C++ registry (cpp/include/rnncore/cells.hpp).
STEPS = {
    "rnn_tanh": _cell(rnn_forward, rnn_backward, gates=1, states=1, act="tanh"),
    "rnn_relu": _cell(rnn_forward, rnn_backward, gates=1, states=1, act="relu"),
    "lstm": _cell(lstm_forward, lstm_backward, gates=4, states=2, peephole=False),
    "peephole_lstm": _cell(lstm_forward, lstm_backward, gates=4, states=2, peephole_rows=3,
                           peephole=True),
    "gru": _cell(gru_forward, gru_backward, gates=3, states=1, reset_after=True),
    "gru_reset_before": _cell(gru_forward, gru_backward, gates=3, states=1, reset_after=False),
}
CELLS = tuple(STEPS)


def num_gates(cell):
    return STEPS[cell].gates


def has_cell_state(cell):
    return STEPS[cell].states == 2


def init_params(cell, input_size, hidden_size, rng, bias=True):
    """uniform(-1/sqrt(H), 1/sqrt(H)) float64 parameters with the reference's key names."""
    step, H, k = STEPS[cell], hidden_size, 1.0 / np.sqrt(hidden_size)
    G = step.gates
    p = {"w_ih": rng.uniform(-k, k, (G * H, input_size)),
         "w_hh": rng.uniform(-k, k, (G * H, H)),
         "b_ih": rng.uniform(-k, k, G * H) if bias else None,
         "b_hh": rng.uniform(-k, k, G * H) if bias else None}
    if step.peephole_rows:
        p["w_peephole"] = rng.uniform(-k, k, (step.peephole_rows, H))
    return p


# ---- whole sequences -------------------------------------------------------------------------
def _schedule(T, B, lengths, reverse):
    """For each sequence, the time indices it visits, in processing order."""
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    order = []
    for b in range(B):
        ts = list(range(int(lengths[b])))
        order.append(ts[::-1] if reverse else ts)
    return lengths, order


def forward(cell, x, state, params, reverse=False, lengths=None):
    """x (T, B, I) float64; state (h0,) or (h0, c0). Returns (y, state_n, cache)."""
    step = STEPS[cell]
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H = params["w_hh"].shape[1]
    lengths, order = _schedule(T, B, lengths, reverse)
    states = [np.array(s, np.float64, copy=True) for s in state[:step.states]]
    y = np.zeros((T, B, H))
    records = []  # per step s: (rows active, their time indices, record)
    steps = int(lengths.max()) if B else 0
    for s in range(steps):
        rows = np.array([b for b in range(B) if s < lengths[b]], dtype=np.int64)
        ts = np.array([order[b][s] for b in rows], dtype=np.int64)
        new, rec = step.forward(x[ts, rows], tuple(st[rows] for st in states), params)
        for st, value in zip(states, new):
            st[rows] = value
        y[ts, rows] = new[0]
        records.append((rows, ts, rec))
    cache = {"cell": cell, "x": x, "params": params, "records": records, "H": H}
    return y, tuple(states), cache


def backward(cache, dy, dstate_n, grad_norms=None):
    """BPTT. dy (T, B, H); dstate_n (dh_n,) or (dh_n, dc_n). Returns (dx, dstate0, dparams).

    grad_norms: an array (T,) to receive ||dL/dh_t||, the norm over the batch of the whole
    gradient reaching h_t (from y_t and from step t+1)."""
    step, x, p = STEPS[cache["cell"]], cache["x"], cache["params"]
    dy = np.asarray(dy, np.float64)
    grads = {k: (None if v is None else np.zeros_like(v)) for k, v in p.items()}
    dx = np.zeros_like(x)
    dstates = [np.array(d, np.float64, copy=True) for d in dstate_n[:step.states]]
    squares = np.zeros(x.shape[0])
    for rows, ts, rec in reversed(cache["records"]):
        d_new = [d[rows] for d in dstates]
        d_new[0] = d_new[0] + dy[ts, rows]  # h_t is both the output y_t and the next state
        np.add.at(squares, ts, np.sum(d_new[0] ** 2, axis=1))
        dx_t, d_prev = step.backward(x[ts, rows], rec, tuple(d_new), p, grads)
        dx[ts, rows] = dx_t
        for d, value in zip(dstates, d_prev):
            d[rows] = value
    if grad_norms is not None:
        grad_norms[...] = np.sqrt(squares)
    return dx, tuple(dstates), grads
