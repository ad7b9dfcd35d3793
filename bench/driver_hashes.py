"""Bitwise fingerprint of the C++ drivers, for refactors that must not change a single bit.

Runs every cell variant (LSTM, PeepholeLSTM, GRU reset_after True/False, RNN tanh/relu) in
float32 and float64 on 1 and 2 threads over a small grid (1 and 2 layers, uni- and
bidirectional, with and without variable lengths, dropout between layers, bias on and off, odd
sizes that hit vector tails, and sizes large enough for the time loop to split its units over two
threads): a training forward and backward with fixed seeds (every other configuration also
recording the gradient-flow norms, rnncore.diagnostics' branch of the backward sweep), an
inference forward, and a few single steps of the matching cell forward and backward. It prints one sha256 per configuration
over every output, final state, dx, dh0 (dc0) and parameter gradient, then a total.

Only the public API is used (rnncore.LSTM/GRU/RNN/PeepholeLSTM, the cells, set_num_threads), so
the script runs unchanged on the tree before and after a refactor: save its output from both and
diff them.

    python bench/driver_hashes.py > hashes.txt
"""

import hashlib
import itertools

import numpy as np

import rnncore

# (name, module constructor, cell constructor): every registry cell.
VARIANTS = [
    ("lstm", lambda **k: rnncore.LSTM(**k), lambda **k: rnncore.LSTMCell(**k)),
    ("peephole_lstm", lambda **k: rnncore.PeepholeLSTM(**k),
     lambda **k: rnncore.PeepholeLSTMCell(**k)),
    ("gru_reset_after", lambda **k: rnncore.GRU(reset_after=True, **k),
     lambda **k: rnncore.GRUCell(reset_after=True, **k)),
    ("gru_reset_before", lambda **k: rnncore.GRU(reset_after=False, **k),
     lambda **k: rnncore.GRUCell(reset_after=False, **k)),
    ("rnn_tanh", lambda **k: rnncore.RNN(nonlinearity="tanh", **k),
     lambda **k: rnncore.RNNCell(nonlinearity="tanh", **k)),
    ("rnn_relu", lambda **k: rnncore.RNN(nonlinearity="relu", **k),
     lambda **k: rnncore.RNNCell(nonlinearity="relu", **k)),
]

# (T, B, I, H): odd sizes for vector tails; B=33 H=96 and B=1 H=256 are large enough for the
# time loop (and the step engine) to use two threads when two are allowed.
SIZES = [(7, 5, 3, 17), (20, 17, 6, 65), (9, 33, 10, 96), (5, 1, 8, 256)]
STACKS = [  # (num_layers, bidirectional, variable lengths, bias)
    (1, False, False, True),
    (1, True, True, True),
    (2, False, True, False),
    (2, True, False, True),
    (2, True, True, True),
]
DROPOUT = 0.3
STEP_SIZES = [(5, 3, 17), (33, 10, 96)]  # (B, I, H) of the single steps
STEPS = 3


def _digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _states(state):
    return list(state) if isinstance(state, tuple) else [state]


def run_stack(make, dtype, size, stack, seed, record_grad_norms):
    T, B, I, H = size
    layers, bidirectional, ragged, bias = stack
    m = make(input_size=I, hidden_size=H, num_layers=layers, bias=bias, dropout=DROPOUT,
             bidirectional=bidirectional, dtype=dtype, seed=seed)
    is_lstm = isinstance(m, rnncore.LSTM)
    rng = np.random.default_rng(seed + 1)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    state0 = (h0, rng.standard_normal((layers * D, B, H)).astype(dtype)) if is_lstm else h0
    lengths = rng.integers(0, T + 1, size=B) if ragged else None
    if ragged:
        lengths[0] = T  # the longest sequence spans the whole input
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dh = rng.standard_normal((layers * D, B, H)).astype(dtype)
    dstate = (dh, rng.standard_normal((layers * D, B, H)).astype(dtype)) if is_lstm else dh
    out = []
    m.eval()
    y, state = m(x, state0, lengths=lengths)
    out += [y] + _states(state)
    m.train()
    m.zero_grad()
    m.record_grad_norms = record_grad_norms  # the diagnostics' branch of the backward sweep
    y, state = m(x, state0, lengths=lengths)
    out += [y] + _states(state)
    dx, dstate0 = m.backward(dy, dstate)
    out += [dx] + _states(dstate0)
    if record_grad_norms:
        out.append(m.grad_norms)
    out += [m.grads[k] for k in sorted(m.grads)]
    return _digest(out)


def run_cell(make, dtype, size, seed):
    B, I, H = size
    cell = make(input_size=I, hidden_size=H, dtype=dtype, seed=seed)
    is_lstm = isinstance(cell, rnncore.LSTMCell)
    rng = np.random.default_rng(seed + 2)
    h = rng.standard_normal((B, H)).astype(dtype)
    state = (h, rng.standard_normal((B, H)).astype(dtype)) if is_lstm else h
    out = []
    cell.eval()
    out += _states(cell(rng.standard_normal((B, I)).astype(dtype), state))
    cell.train()
    cell.zero_grad()
    for _ in range(STEPS):
        state = cell(rng.standard_normal((B, I)).astype(dtype), state)
        out += _states(state)
    for _ in range(STEPS):
        d = rng.standard_normal((B, H)).astype(dtype)
        dstate = (d, rng.standard_normal((B, H)).astype(dtype)) if is_lstm else d
        dx, dprev = cell.backward(dstate)
        out += [dx] + _states(dprev)
    out += [cell.grads[k] for k in sorted(cell.grads)]
    return _digest(out)


def main():
    total = hashlib.sha256()
    for threads in (1, 2):
        rnncore.set_num_threads(threads)
        for (name, make_stack, make_cell), dtype in itertools.product(
                VARIANTS, (np.float32, np.float64)):
            dt = np.dtype(dtype).name
            for i, (size, stack) in enumerate(itertools.product(SIZES, STACKS)):
                digest = run_stack(make_stack, dtype, size, stack, seed=100 + i,
                                   record_grad_norms=i % 2 == 1)
                line = f"stack threads={threads} {name} {dt} TBIH={size} LDlb={stack} {digest}"
                total.update(line.encode())
                print(line, flush=True)
            for i, size in enumerate(STEP_SIZES):
                digest = run_cell(make_cell, dtype, size, seed=200 + i)
                line = f"cell threads={threads} {name} {dt} BIH={size} {digest}"
                total.update(line.encode())
                print(line, flush=True)
    print(f"total {total.hexdigest()}")


if __name__ == "__main__":
    main()
