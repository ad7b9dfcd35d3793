"""Gradient-flow diagnostics: how the gradient of the loss changes as it travels back in time.

The lectures' vanishing and exploding gradients, in numbers. BPTT multiplies the gradient
reaching h_t by the step Jacobian dh_t/dh_{t-1} once per step back, so ||dL/dh_t|| shrinks or
grows geometrically with the distance from where the loss is taken when those Jacobians are
contracting (tanh RNNs, saturated gates) or expanding (large recurrent weights).

- `record_grad_norms(model)`: every recurrent layer inside `model` records ||dL/dh_t|| during its
  backward from then on (`module.grad_norms`, shape (num_layers * num_directions, T)). The norms
  come from the gradients the C++ BPTT loop computes anyway: no second pass.
- `gradient_norms(model)`: those norms, by the layer's name in the model.
- `jacobian_norms(module, x)`: ||dh_{T-1} / dh_t||_F for t = 0 .. T-1 (top layer's last state
  with respect to every layer's state at t), the pure recurrent part, without any loss.
- `plot_gradient_flow(curves, path)`: a semilog plot of such curves (matplotlib optional).
"""
from __future__ import annotations

import copy

import numpy as np

from rnncore._interop import pyplot
from rnncore.nn.recurrent import _RNNBase


def _recurrent_layers(model, prefix=""):
    """(dotted name, module) of every rnncore recurrent module in model (model itself included)."""
    if isinstance(model, _RNNBase):
        return [(prefix, model)]
    children = getattr(model, "named_children", None)
    if children is None:
        raise TypeError(f"model must be an rnncore recurrent module or an rnncore.Model, got "
                        f"{type(model).__name__}")
    out = []
    for name, child in children():
        if isinstance(child, _RNNBase) or hasattr(child, "named_children"):
            out.extend(_recurrent_layers(child, f"{prefix}.{name}" if prefix else name))
    return out


def record_grad_norms(model, enabled=True):
    """Makes every recurrent layer of `model` record ||dL/dh_t|| in its backward (or stop)."""
    layers = _recurrent_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no rnncore recurrent layer to record")
    for _, m in layers:
        m.record_grad_norms = bool(enabled)
    return model


def gradient_norms(model):
    """{layer name: array (num_layers * num_directions, T)} of ||dL/dh_t|| from the last backward
    (recording must be on: record_grad_norms)."""
    out = {}
    for name, m in _recurrent_layers(model):
        if m.grad_norms is None:
            raise RuntimeError(f"{name or type(m).__name__} has no recorded gradient norms: call "
                               "rnncore.diagnostics.record_grad_norms(model) before backward")
        out[name] = m.grad_norms
    return out


def jacobian_norms(module, x, h0=None):
    """||dh_{T-1} / dh_t||_F of a (unidirectional) recurrent module, for t = 0 .. T-1 and every
    layer: the Frobenius norm of the Jacobian of the top layer's last hidden state with respect
    to layer l's hidden state at step t, averaged (root mean square) over the sequences of x.

    x: (T, input_size) or (T, B, input_size) (time-major whatever the module's batch_first).
    Returns an array (num_layers, T). One forward and one backward of a copy of the module with
    the batch repeated hidden_size times: sequence b's copy i back-propagates the unit vector
    e_i from h_{T-1}, so the recorded ||dL/dh_t||^2 sums the squared rows of every Jacobian."""
    if not isinstance(module, _RNNBase):
        raise TypeError(f"module must be an rnncore recurrent module, got {type(module).__name__}")
    if module.bidirectional:
        raise ValueError("jacobian_norms needs a unidirectional module (the reverse direction's "
                         "last state is at t = 0)")
    x = np.asarray(x, dtype=module.dtype)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3 or x.shape[2] != module.input_size or x.shape[0] == 0:
        raise ValueError(f"x must have shape (T, input_size={module.input_size}) or (T, B, "
                         f"{module.input_size}) with T >= 1, got {x.shape}")
    T, B, _ = x.shape
    H, L = module.hidden_size, module.num_layers
    probe = copy.deepcopy(module)
    probe.batch_first = False
    probe.dropout = 0.0
    probe.train()
    probe.record_grad_norms = True
    xs = np.repeat(x, H, axis=1)                      # sequence b -> rows b*H .. b*H + H-1
    if h0 is not None:
        h0 = tuple(np.repeat(np.asarray(a), H, axis=1) for a in h0) if isinstance(h0, tuple) \
            else np.repeat(np.asarray(h0), H, axis=1)
    y, _ = probe(xs, h0)
    dh_n = np.zeros((L, B * H, H), module.dtype)
    dh_n[L - 1] = np.tile(np.eye(H, dtype=module.dtype), (B, 1))
    d_state = (dh_n, np.zeros_like(dh_n)) if probe._has_cell_state else dh_n
    probe.backward(np.zeros_like(y), d_state)
    return probe.grad_norms / np.sqrt(B)


def plot_gradient_flow(curves, path, title="Gradient flow", ylabel="||dL/dh_t||"):
    """Semilog plot of {label: values over t} into path (PNG). Returns path, or None (with a
    one-line note on stderr) when matplotlib is not installed."""
    plt = pyplot(path)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        ax.semilogy(np.arange(len(values)), np.maximum(values, 1e-300), label=label)
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
