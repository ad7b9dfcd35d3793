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
"""
from __future__ import annotations

import numpy as np

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "peephole_lstm", "gru", "gru_reset_before")
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "peephole_lstm": 4, "gru": 3,
          "gru_reset_before": 3}


def num_gates(cell):
    return _GATES[cell]


def has_cell_state(cell):
    return cell in ("lstm", "peephole_lstm")


def init_params(cell, input_size, hidden_size, rng, bias=True):
    """uniform(-1/sqrt(H), 1/sqrt(H)) float64 parameters with the reference's key names."""
    G, H, k = _GATES[cell], hidden_size, 1.0 / np.sqrt(hidden_size)
    p = {"w_ih": rng.uniform(-k, k, (G * H, input_size)),
         "w_hh": rng.uniform(-k, k, (G * H, H)),
         "b_ih": rng.uniform(-k, k, G * H) if bias else None,
         "b_hh": rng.uniform(-k, k, G * H) if bias else None}
    if cell == "peephole_lstm":
        p["w_peephole"] = rng.uniform(-k, k, (3, H))
    return p


def sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + exp(-a)), without overflow


def _bias(b, size):
    return np.zeros(size) if b is None else b


def _schedule(T, B, lengths, reverse):
    """For each sequence, the time indices it visits, in processing order."""
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    order = []
    for b in range(B):
        ts = list(range(int(lengths[b])))
        order.append(ts[::-1] if reverse else ts)
    return lengths, order


def _step_forward(cell, x_t, h, c, p, H):
    """One step for a batch of rows. Returns (h_new, c_new, record for backward)."""
    G = _GATES[cell]
    b_ih, b_hh = _bias(p["b_ih"], G * H), _bias(p["b_hh"], G * H)
    gx = x_t @ p["w_ih"].T + b_ih                       # input side of every gate
    if cell in ("rnn_tanh", "rnn_relu"):
        a = gx + h @ p["w_hh"].T + b_hh
        h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0.0)
        return h_new, None, {"h_prev": h, "h": h_new}
    if cell in ("lstm", "peephole_lstm"):
        a = gx + h @ p["w_hh"].T + b_hh
        a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
        if cell == "peephole_lstm":
            w = p["w_peephole"]
            a_i = a_i + w[0] * c
            a_f = a_f + w[1] * c
        i, f, g = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g)
        c_new = f * c + i * g
        if cell == "peephole_lstm":
            a_o = a_o + p["w_peephole"][2] * c_new
        o = sigmoid(a_o)
        h_new = o * np.tanh(c_new)
        return h_new, c_new, {"h_prev": h, "c_prev": c, "i": i, "f": f, "g": g, "o": o,
                              "c": c_new}
    # GRU
    w_hh = p["w_hh"]
    gh_rz = h @ w_hh[:2 * H].T + b_hh[:2 * H]
    r = sigmoid(gx[:, :H] + gh_rz[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh_rz[:, H:])
    if cell == "gru":
        hn = h @ w_hh[2 * H:].T + b_hh[2 * H:]          # W_hn h + b_hn
        n = np.tanh(gx[:, 2 * H:] + r * hn)
        rec = {"hn": hn}
    else:
        rh = r * h
        n = np.tanh(gx[:, 2 * H:] + rh @ w_hh[2 * H:].T + b_hh[2 * H:])
        rec = {"rh": rh}
    h_new = (1.0 - z) * n + z * h
    rec.update({"h_prev": h, "r": r, "z": z, "n": n})
    return h_new, None, rec


def forward(cell, x, state, params, reverse=False, lengths=None):
    """x (T, B, I) float64; state (h0,) or (h0, c0). Returns (y, state_n, cache)."""
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    H = params["w_hh"].shape[1]
    lengths, order = _schedule(T, B, lengths, reverse)
    h = np.array(state[0], np.float64, copy=True)
    c = np.array(state[1], np.float64, copy=True) if has_cell_state(cell) else None
    y = np.zeros((T, B, H))
    records = []  # per step s: (rows active, their time indices, record)
    steps = int(lengths.max()) if B else 0
    for s in range(steps):
        rows = np.array([b for b in range(B) if s < lengths[b]], dtype=np.int64)
        ts = np.array([order[b][s] for b in rows], dtype=np.int64)
        h_new, c_new, rec = _step_forward(cell, x[ts, rows], h[rows], None if c is None else c[rows],
                                          params, H)
        h[rows] = h_new
        if c is not None:
            c[rows] = c_new
        y[ts, rows] = h_new
        records.append((rows, ts, rec))
    cache = {"cell": cell, "x": x, "params": params, "records": records, "H": H}
    return y, ((h, c) if c is not None else (h,)), cache


def _step_backward(cell, x_t, rec, dh, dc, p, H, grads):
    """Backward of one step. dh, dc: gradients w.r.t. the step's new state (rows of the step).
    Adds parameter gradients into grads; returns (dx_t, dh_prev, dc_prev)."""
    G = _GATES[cell]
    h_prev = rec["h_prev"]
    if cell in ("rnn_tanh", "rnn_relu"):
        h = rec["h"]
        da = dh * ((1.0 - h * h) if cell == "rnn_tanh" else (h > 0).astype(np.float64))
        da_x = da_h = da
        dh_prev = np.zeros_like(dh)
        dc_prev = None
        operand_h = h_prev
    elif cell in ("lstm", "peephole_lstm"):
        i, f, g, o, c, c_prev = rec["i"], rec["f"], rec["g"], rec["o"], rec["c"], rec["c_prev"]
        tc = np.tanh(c)
        da_o = dh * tc * o * (1.0 - o)
        dct = dc + dh * o * (1.0 - tc * tc)
        if cell == "peephole_lstm":
            dct = dct + p["w_peephole"][2] * da_o
        da_i = dct * g * i * (1.0 - i)
        da_f = dct * c_prev * f * (1.0 - f)
        da_g = dct * i * (1.0 - g * g)
        dc_prev = dct * f
        if cell == "peephole_lstm":
            w = p["w_peephole"]
            dc_prev = dc_prev + w[0] * da_i + w[1] * da_f
            grads["w_peephole"][0] += (da_i * c_prev).sum(0)
            grads["w_peephole"][1] += (da_f * c_prev).sum(0)
            grads["w_peephole"][2] += (da_o * c).sum(0)
        da_x = da_h = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
        dh_prev = np.zeros_like(dh)
        operand_h = h_prev
    else:
        r, z, n = rec["r"], rec["z"], rec["n"]
        da_n = dh * (1.0 - z) * (1.0 - n * n)
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        dh_prev = dh * z
        dc_prev = None
        w_hn = p["w_hh"][2 * H:]
        if cell == "gru":
            da_r = da_n * rec["hn"] * r * (1.0 - r)
            da_x = np.concatenate([da_r, da_z, da_n], axis=1)
            da_h = np.concatenate([da_r, da_z, da_n * r], axis=1)
            operand_h = h_prev
        else:
            d_rh = da_n @ w_hn
            da_r = d_rh * h_prev * r * (1.0 - r)
            dh_prev = dh_prev + d_rh * r
            da_x = da_h = np.concatenate([da_r, da_z, da_n], axis=1)
            # the n rows of W_hh multiply r * h_prev; the r, z rows multiply h_prev
            grads["w_hh"][2 * H:] += da_n.T @ rec["rh"]
            grads["w_hh"][:2 * H] += da_h[:, :2 * H].T @ h_prev
            if grads["b_hh"] is not None:
                grads["b_hh"] += da_h.sum(0)
            grads["w_ih"] += da_x.T @ x_t
            if grads["b_ih"] is not None:
                grads["b_ih"] += da_x.sum(0)
            dh_prev = dh_prev + da_h[:, :2 * H] @ p["w_hh"][:2 * H]
            return da_x @ p["w_ih"], dh_prev, None
    grads["w_ih"] += da_x.T @ x_t
    grads["w_hh"] += da_h.T @ operand_h
    if grads["b_ih"] is not None:
        grads["b_ih"] += da_x.sum(0)
        grads["b_hh"] += da_h.sum(0)
    dh_prev = dh_prev + da_h @ p["w_hh"]
    assert da_x.shape[1] == G * H
    return da_x @ p["w_ih"], dh_prev, dc_prev


def backward(cache, dy, dstate_n):
    """BPTT. dy (T, B, H); dstate_n (dh_n,) or (dh_n, dc_n). Returns (dx, dstate0, dparams)."""
    cell, x, p, H = cache["cell"], cache["x"], cache["params"], cache["H"]
    dy = np.asarray(dy, np.float64)
    grads = {k: (None if v is None else np.zeros_like(v)) for k, v in p.items()}
    dx = np.zeros_like(x)
    dh = np.array(dstate_n[0], np.float64, copy=True)
    dc = np.array(dstate_n[1], np.float64, copy=True) if has_cell_state(cell) else None
    for rows, ts, rec in reversed(cache["records"]):
        dh_rows = dh[rows] + dy[ts, rows]
        dx_t, dh_prev, dc_prev = _step_backward(cell, x[ts, rows], rec, dh_rows,
                                                None if dc is None else dc[rows], p, H, grads)
        dx[ts, rows] = dx_t
        dh[rows] = dh_prev
        if dc is not None:
            dc[rows] = dc_prev
    return dx, ((dh, dc) if dc is not None else (dh,)), grads
