"""Finite-difference check of any module's backward, for rnncore's own tests and for users.

    report = rnncore.check_gradients(module, (x,))      # raises AssertionError when wrong

The loss is a random projection of every output, L = sum_k <W_k, out_k> (W_k standard normal,
fixed), so every output element and every final state carries a non-zero gradient. backward is
called once with dL/dout_k = W_k; each checked entry of each input and each parameter is then
compared with the float64 central difference (L(v + eps) - L(v - eps)) / (2 eps).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rnncore.nn.model import named_generators
from rnncore.nn.module import parameters_changed


@dataclass
class GradientCheck:
    """The result for one array (an input or a parameter)."""
    name: str                 # "param weight", "input 0", "input 1[0]" (a tuple input's part)
    shape: tuple
    checked: int              # entries compared (all, or a random sample of large arrays)
    failed: int               # entries outside atol + rtol * |numeric|
    max_abs_error: float
    worst_index: tuple        # the entry with the largest error relative to its tolerance
    analytic: float
    numeric: float
    tolerance: float          # atol + rtol * |numeric| at worst_index

    @property
    def ok(self):
        return self.failed == 0


@dataclass
class GradientReport:
    """All checked arrays; `ok` when every entry is within tolerance."""
    module: str
    checks: list = field(default_factory=list)

    @property
    def ok(self):
        return all(c.ok for c in self.checks)

    @property
    def worst(self):
        """The check whose worst entry is furthest outside (or least inside) its tolerance."""
        if not self.checks:
            return None
        return max(self.checks, key=lambda c: abs(c.analytic - c.numeric) / c.tolerance)

    def __str__(self):
        lines = [f"gradient check of {self.module}: {'ok' if self.ok else 'FAILED'}"]
        for c in self.checks:
            lines.append(f"  {c.name:<28} {str(c.shape):<16} checked {c.checked:>5}  failed "
                         f"{c.failed:>4}  max |analytic - numeric| {c.max_abs_error:.2e}")
        return "\n".join(lines)


def _flatten(tree, path=()):
    """Nested tuples -> [(path, leaf)] (a list is a leaf, as numpy would read it)."""
    if isinstance(tree, tuple):
        out = []
        for i, t in enumerate(tree):
            out.extend(_flatten(t, path + (i,)))
        return out
    return [(path, tree)]


def _rebuild(tree, leaves, path=()):
    """The structure of tree with leaves[path] in place of each leaf."""
    if isinstance(tree, tuple):
        return tuple(_rebuild(t, leaves, path + (i,)) for i, t in enumerate(tree))
    return leaves.get(path, tree)


def _is_float_array(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def _path_name(prefix, path):
    return prefix + "".join(f"[{i}]" for i in path[1:]) if len(path) > 1 else prefix


def check_gradients(module, inputs, *, forward_kwargs=None, backward=None, eps=1e-6, atol=1e-6,
                    rtol=1e-5, max_entries=64, check_inputs=True, seed=0, raise_on_failure=True):
    """Checks module.backward against float64 central finite differences.

    module: any rnncore module or Model with float64 parameters, in training mode or not (the
        check runs a training-mode forward and restores the mode, the parameters and `grads`
        afterwards; the module is left without a pending backward).
    inputs: forward's positional arguments (a tuple; a single array is taken as one argument).
        Float arrays, also inside tuples such as an LSTM's (h0, c0), are converted to float64
        and checked; integer arrays (token ids, lengths) and None are passed through.
    forward_kwargs: keyword arguments for forward (e.g. {"lengths": ...}).
    backward: called as backward(module, dout) where dout has the structure of forward's output;
        by default module.backward(*dout) for a tuple output (rnncore.LSTM: (dy, (dh_n, dc_n)))
        and module.backward(dout) for an array. It returns the input gradients: a tuple
        matching the inputs position by position (it may be longer, e.g. rnncore.GRU's
        (dx, dh0) for x alone), a single array for the first input, or None.
    check_inputs: every float input must then get a gradient back (else AssertionError).
    max_entries: larger arrays are checked at this many random entries (seeded by `seed`).
    Random draws in forward (dropout) are replayed from the module's own generators, so every
    evaluation sees the same masks.

    Returns a GradientReport; raises AssertionError naming the worst entry when any entry has
    |analytic - numeric| > atol + rtol * |numeric| (unless raise_on_failure=False)."""
    name = type(module).__name__
    _require_float64(name, module)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    # our own float64 copies of the float inputs: the central differences write into them
    leaves = {path: np.array(leaf, dtype=np.float64) for path, leaf in _flatten(inputs)
              if _is_float_array(leaf)}
    checker = _Checker(module, _rebuild(inputs, leaves), dict(forward_kwargs or {}),
                       np.random.default_rng(seed), eps, atol, rtol, max_entries)
    was_training = module.training
    saved_grads = {k: g.copy() for k, g in module.grads.items()}
    try:
        returned, analytic_params = checker.analytic(backward)
        if check_inputs:
            for path, array in leaves.items():
                label = _path_name(f"input {path[0]}", path)
                if path not in returned or returned[path] is None:
                    raise AssertionError(f"check_gradients({name}): backward returned no "
                                         f"gradient for {label} (a float input); pass "
                                         "check_inputs=False to check the parameters only")
                checker.compare(label, array, returned[path])
        for k, p in module.params.items():
            checker.compare(f"param {k}", p, analytic_params[k])
    finally:
        module.train(False)
        module.train(was_training)
        for k, g in module.grads.items():
            g[...] = saved_grads[k]
    if raise_on_failure and not checker.report.ok:
        raise AssertionError(_failure_message(name, checker.report))
    return checker.report


def _require_float64(name, module):
    for k, p in module.params.items():
        if p.dtype != np.float64:
            raise ValueError(f"check_gradients({name}) needs float64 parameters, got {p.dtype} "
                             f"for {k!r} (build the module with dtype=np.float64)")


class _Checker:
    """One check's state: the module and its arguments, the random projection of the outputs
    (the loss), the replayed random state of forward, and the report being filled."""

    def __init__(self, module, args, kwargs, rng, eps, atol, rtol, max_entries):
        self.module, self.args, self.kwargs, self.rng = module, args, kwargs, rng
        self.eps, self.atol, self.rtol, self.max_entries = eps, atol, rtol, max_entries
        self.name = type(module).__name__
        self.generators = [g for _, g in named_generators(module)]
        self.random_state = [g.bit_generator.state for g in self.generators]
        self.weights = None
        self.report = GradientReport(self.name)

    def forward(self):
        """forward with the random draws (dropout) of the first evaluation replayed."""
        for g, s in zip(self.generators, self.random_state):
            g.bit_generator.state = s
        return self.module(*self.args, **self.kwargs)

    def analytic(self, backward):
        """One training-mode forward and backward with dL/dout = the projection weights:
        ({input path: returned gradient}, {parameter: gradient})."""
        module, name = self.module, self.name
        module.train()
        module.zero_grad()
        out = self.forward()
        out_leaves = _flatten(out)
        for path, leaf in out_leaves:
            if leaf is not None and not _is_float_array(leaf):
                raise TypeError(f"check_gradients({name}): forward must return float arrays "
                                f"(or tuples of them), got {type(leaf).__name__} at {path}")
        self.weights = {path: self.rng.standard_normal(leaf.shape) for path, leaf in out_leaves
                        if leaf is not None}
        dout = _rebuild(out, self.weights)
        if backward is None:
            returned = module.backward(*dout) if isinstance(out, tuple) else module.backward(dout)
        else:
            returned = backward(module, dout)
        analytic_params = {k: g.copy() for k, g in module.grads.items()}
        if not isinstance(returned, tuple):
            returned = (returned,)
        return dict(_flatten(tuple(returned))), analytic_params

    def loss(self):
        o = self.forward()
        self.module.train(False)   # drops what forward recorded for a backward
        self.module.train(True)
        return sum(float(np.sum(self.weights[p] * leaf)) for p, leaf in _flatten(o)
                   if leaf is not None)

    def numeric(self, flat, idx):
        """Central differences of the loss at entries idx of flat (a view of the array)."""
        eps = self.eps
        numeric = np.empty(len(idx))
        for j, i in enumerate(idx):
            # One entry written in place: the cells see it themselves (they compare their
            # weights before every step); parameters_changed() is kept for other holders.
            v = flat[i]
            flat[i] = v + eps
            parameters_changed()
            up = self.loss()
            flat[i] = v - eps
            parameters_changed()
            down = self.loss()
            flat[i] = v
            parameters_changed()
            numeric[j] = (up - down) / (2 * eps)
        return numeric

    def compare(self, label, array, analytic):
        """Adds the GradientCheck of one array (an input or a parameter) to the report."""
        analytic = np.asarray(analytic, dtype=np.float64)
        if analytic.shape != array.shape:
            raise AssertionError(f"check_gradients({self.name}): the gradient of {label} has "
                                 f"shape {analytic.shape}, expected {array.shape}")
        flat = array.reshape(-1)  # a view: writing an entry perturbs the input or parameter
        idx = np.arange(flat.size)
        if flat.size > self.max_entries:
            idx = np.sort(self.rng.choice(flat.size, size=self.max_entries, replace=False))
        numeric = self.numeric(flat, idx)
        if len(idx) == 0:
            self.report.checks.append(GradientCheck(label, array.shape, 0, 0, 0.0, (), 0.0, 0.0,
                                                    self.atol))
            return
        a = analytic.reshape(-1)[idx]
        err = np.abs(a - numeric)
        tol = self.atol + self.rtol * np.abs(numeric)
        worst = int(np.argmax(err / tol))
        self.report.checks.append(GradientCheck(
            label, array.shape, len(idx), int(np.sum(err > tol)), float(err.max()),
            tuple(int(k) for k in np.unravel_index(int(idx[worst]), array.shape)),
            float(a[worst]), float(numeric[worst]), float(tol[worst])))


def _failure_message(name, report):
    w = report.worst
    failed = sum(c.failed for c in report.checks)
    checked = sum(c.checked for c in report.checks)
    return (f"check_gradients({name}): {failed} of {checked} checked entries differ from the "
            f"finite differences; worst: {w.name}{list(w.worst_index)} analytic {w.analytic:.8e}, "
            f"numeric {w.numeric:.8e}, |difference| {abs(w.analytic - w.numeric):.2e} > "
            f"atol + rtol * |numeric| = {w.tolerance:.2e}\n{report}")
