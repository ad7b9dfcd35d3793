"""Optimisers, gradient clipping and learning-rate schedules over modules' `params` / `grads`
dicts (parameters are updated in place, so every module sees the new values at once).

The update formulas are torch.optim's (its single-tensor CPU path), step for step: with the same
gradients and float64 parameters they agree with torch to rounding (tests/test_optim.py).
Notation per parameter p with gradient g, step t = 1, 2, ... and learning rate lr (the `lr`
attribute, which the schedules below set before each step).

An optimiser takes a module (an rnncore module or Model) or a list of them. Its state is named
after the parameters ("rnn.weight_ih_l0"; with a list, "0.weight", "1.weight"); an array seen
twice (tied weights) is updated once.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from rnncore.nn.module import check_keys, parameters_changed, to_numpy, walk_parameters


# ---- the parameters an optimiser walks --------------------------------------------------------
def _pairs(modules):
    return [(p, g) for _, p, g in walk_parameters(modules)]


def clip_grad_norm(modules, max_norm):
    """Scales all gradients so their global L2 norm is at most max_norm (Pascanu et al. 2013,
    the remedy for exploding gradients in BPTT):  g <- g * max_norm / ||g||  when ||g|| > max_norm.
    Returns the norm before clipping."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm!r}")
    pairs = _pairs(modules)
    total = float(np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for _, g in pairs)))
    if total > max_norm:
        scale = max_norm / (total + 1e-12)
        for _, g in pairs:
            g *= g.dtype.type(scale)
    return total


def clip_grad_value(modules, clip):
    """Clips every gradient element to [-clip, clip] in place (torch.nn.utils.clip_grad_value_)."""
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not clip > 0:
        raise ValueError(f"clip must be a positive number, got {clip!r}")
    for _, g in _pairs(modules):
        np.clip(g, -clip, clip, out=g)


# ---- checks -----------------------------------------------------------------------------------
def _real(name, value, low=None, high=None, high_open=False, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


# ---- optimisers -------------------------------------------------------------------------------
class Optimizer:
    """Base of the optimisers: named parameters, per-parameter state buffers, state dicts.

    Subclasses name their hyperparameters (`hyperparameter_names`, lr first), check them
    (`_check_hyperparameters`), name the buffers a setting needs (`_buffer_names`) and update one
    parameter (`_update`)."""

    hyperparameter_names = ("lr",)

    def __init__(self, modules, **hyperparameters):
        self._params = walk_parameters(modules)
        if not _real("lr", hyperparameters["lr"], low=0.0) > 0:
            raise ValueError(f"lr must be positive, got {hyperparameters['lr']!r}")
        h = self._check_hyperparameters(hyperparameters)
        for k, v in h.items():
            setattr(self, k, v)
        self.step_count = 0
        self.state = OrderedDict(
            (name, OrderedDict((b, np.zeros_like(p)) for b in self._buffer_names(h)))
            for name, p, _ in self._params)
        self._scratch = {}

    # hooks
    def _check_hyperparameters(self, h):
        return {"lr": _real("lr", h["lr"], low=0.0)}

    def _buffer_names(self, h):
        return ()

    def _update(self, p, g, state):
        raise NotImplementedError

    # use
    @property
    def pairs(self):
        """[(param, grad)] in the optimiser's order."""
        return [(p, g) for _, p, g in self._params]

    @property
    def param_names(self):
        return [name for name, _, _ in self._params]

    def hyperparameters(self):
        return {k: getattr(self, k) for k in self.hyperparameter_names}

    def zero_grad(self):
        for _, _, g in self._params:
            g.fill(0)

    def step(self):
        """One update of every parameter from its current gradient."""
        self.step_count += 1
        try:
            for name, p, g in self._params:
                self._update(p, g, self.state[name])
        finally:
            parameters_changed()

    def _tmp(self, p, k):
        """Scratch array k shaped like p (one buffer per dtype and k, reused by every parameter):
        the updates allocate nothing per step."""
        key = (p.dtype.str, k)
        buf = self._scratch.get(key)
        if buf is None or buf.size < p.size:
            size = max(q.size for _, q, _ in self._params if q.dtype == p.dtype)
            buf = self._scratch[key] = np.empty(size, p.dtype)
        return buf[:p.size].reshape(p.shape)

    # state dicts
    def state_dict(self):
        """{"type", "hyperparameters", "step", "state": {param name: {buffer: array copy}}}; the
        first three are JSON-ready (checkpoints store them as JSON, the buffers as tensors)."""
        h = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.hyperparameters().items()}
        return {"type": type(self).__name__, "hyperparameters": h, "step": self.step_count,
                "state": OrderedDict((name, OrderedDict((b, a.copy()) for b, a in bufs.items()))
                                     for name, bufs in self.state.items())}

    def _check_state_dict(self, state_dict):
        """Validates a state dict against this optimiser without changing anything; returns
        (hyperparameters, step, new state arrays). Raises TypeError / KeyError / ValueError."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        check_keys("optimizer state_dict keys", ("type", "hyperparameters", "step", "state"),
                   state_dict, noun="")
        if state_dict["type"] != type(self).__name__:
            raise ValueError(f"the state_dict is of a {state_dict['type']} optimiser, this one is "
                             f"{type(self).__name__}")
        h = state_dict["hyperparameters"]
        check_keys(f"{type(self).__name__} hyperparameters", self.hyperparameter_names, h, noun="")
        h = self._check_hyperparameters(dict(h))
        step = _int("step", state_dict["step"], 0)
        state = state_dict["state"]
        check_keys("optimizer state: parameter names", self.param_names, state, noun="")
        buffers = self._buffer_names(h)
        new_state = OrderedDict()
        for name, p, _ in self._params:
            check_keys(f"optimizer state of {name!r}: buffers", buffers, state[name], noun="")
            new_state[name] = OrderedDict()
            for b in buffers:
                a = to_numpy(state[name][b])
                if a.dtype.kind not in "fiu":
                    raise TypeError(f"optimizer state {name}.{b} must be numeric, got {a.dtype}")
                if tuple(a.shape) != p.shape:
                    raise ValueError(f"optimizer state {name}.{b} has shape {tuple(a.shape)}, "
                                     f"expected {p.shape} (the parameter's)")
                new_state[name][b] = np.array(a, dtype=p.dtype)
        return h, step, new_state

    def load_state_dict(self, state_dict):
        """Restores hyperparameters (lr included), step count and buffers. Mismatched types,
        parameter names, buffers or shapes raise (TypeError / KeyError / ValueError naming what
        differs) and change nothing."""
        h, step, new_state = self._check_state_dict(state_dict)
        for k, v in h.items():
            setattr(self, k, v)
        self.step_count = step
        self.state = new_state
        return self

    def __repr__(self):
        h = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({len(self._params)} parameters, {h})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 decay:

        d = g + weight_decay * p
        momentum:  b = d (t = 1),  b = momentum * b + (1 - dampening) * d (t > 1)
                   d = d + momentum * b (nesterov)  or  d = b
        p = p - lr * d
    """
    hyperparameter_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, modules, lr=0.1, momentum=0.0, weight_decay=0.0, *, dampening=0.0,
                 nesterov=False):
        super().__init__(modules, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _check_hyperparameters(self, h):
        out = super()._check_hyperparameters(h)
        out.update(momentum=_real("momentum", h["momentum"], low=0.0),
                   dampening=_real("dampening", h["dampening"], low=0.0, high=1.0),
                   weight_decay=_real("weight_decay", h["weight_decay"], low=0.0),
                   nesterov=_flag("nesterov", h["nesterov"]))
        if out["nesterov"] and (out["momentum"] == 0 or out["dampening"] != 0):
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={out['momentum']}, dampening={out['dampening']}")
        return out

    def _buffer_names(self, h):
        return ("momentum_buffer",) if h["momentum"] else ()

    def _update(self, p, g, state):
        d = g
        if self.weight_decay:
            d = np.multiply(p, self.weight_decay, out=self._tmp(p, 0))
            d += g
        if self.momentum:
            buf = state["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = d
            else:
                buf *= self.momentum
                if self.dampening:
                    buf += np.multiply(d, 1.0 - self.dampening, out=self._tmp(p, 1))
                else:
                    buf += d
            if self.nesterov:
                d = np.add(d, np.multiply(buf, self.momentum, out=self._tmp(p, 1)),
                           out=self._tmp(p, 1))
            else:
                d = buf
        p -= np.multiply(d, self.lr, out=self._tmp(p, 2))

    @property
    def velocity(self):
        """The momentum buffers, in parameter order (empty without momentum)."""
        return [s["momentum_buffer"] for s in self.state.values() if "momentum_buffer" in s]


def _lerp_into(start, end, weight, tmp):
    """start <- start + weight * (end - start), rounded as torch's CPU lerp."""
    np.subtract(end, start, out=tmp)
    if weight < 0.5:
        tmp *= weight
        start += tmp
    else:
        tmp *= 1.0 - weight
        np.subtract(end, tmp, out=start)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction, L2 weight decay and optional AMSGrad:

        d = g + weight_decay * p
        m = b1 m + (1 - b1) d,   v = b2 v + (1 - b2) d^2      (v_max = max(v_max, v), amsgrad)
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """
    hyperparameter_names = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _decoupled_weight_decay = False

    def __init__(self, modules, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(modules, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)

    def _check_hyperparameters(self, h):
        out = super()._check_hyperparameters(h)
        betas = h["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        out.update(betas=(_real("betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
                          _real("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)),
                   eps=_real("eps", h["eps"], low=0.0),
                   weight_decay=_real("weight_decay", h["weight_decay"], low=0.0),
                   amsgrad=_flag("amsgrad", h["amsgrad"]))
        return out

    def _buffer_names(self, h):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())

    def _update(self, p, g, state):
        b1, b2 = self.betas
        t = self.step_count
        d = g
        if self.weight_decay:
            if self._decoupled_weight_decay:
                p *= 1.0 - self.lr * self.weight_decay
            else:
                d = np.multiply(p, self.weight_decay, out=self._tmp(p, 0))
                d += g
        m, v = state["exp_avg"], state["exp_avg_sq"]
        tmp = self._tmp(p, 1)
        _lerp_into(m, d, 1.0 - b1, tmp)
        v *= b2
        np.multiply(d, 1.0 - b2, out=tmp)
        tmp *= d
        v += tmp
        if self.amsgrad:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        step_size = self.lr / (1.0 - b1 ** t)
        denom = np.sqrt(v, out=tmp)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += self.eps
        update = np.multiply(m, step_size, out=self._tmp(p, 2))
        update /= denom
        p -= update

    # the attribute names of rnncore.optim.Adam before the state dicts
    @property
    def t(self):
        return self.step_count

    @property
    def m(self):
        return [s["exp_avg"] for s in self.state.values()]

    @property
    def v(self):
        return [s["exp_avg_sq"] for s in self.state.values()]


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): first p = p (1 - lr *
    weight_decay), then the Adam update without decay in d."""
    _decoupled_weight_decay = True

    def __init__(self, modules, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(modules, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), optionally centred and with momentum:

        d = g + weight_decay * p
        s = alpha s + (1 - alpha) d^2
        centered:  a = alpha a + (1 - alpha) d,   r = sqrt(s - a^2) + eps;  else r = sqrt(s) + eps
        momentum:  b = momentum b + d / r,  p = p - lr b;   else  p = p - lr d / r
    """
    hyperparameter_names = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, modules, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(modules, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _check_hyperparameters(self, h):
        out = super()._check_hyperparameters(h)
        out.update(alpha=_real("alpha", h["alpha"], low=0.0, high=1.0),
                   eps=_real("eps", h["eps"], low=0.0),
                   weight_decay=_real("weight_decay", h["weight_decay"], low=0.0),
                   momentum=_real("momentum", h["momentum"], low=0.0),
                   centered=_flag("centered", h["centered"]))
        return out

    def _buffer_names(self, h):
        return (("square_avg",) + (("grad_avg",) if h["centered"] else ())
                + (("momentum_buffer",) if h["momentum"] > 0 else ()))

    def _update(self, p, g, state):
        d = g
        if self.weight_decay:
            d = np.multiply(p, self.weight_decay, out=self._tmp(p, 0))
            d += g
        s = state["square_avg"]
        tmp = self._tmp(p, 1)
        s *= self.alpha
        np.multiply(d, 1.0 - self.alpha, out=tmp)
        tmp *= d
        s += tmp
        if self.centered:
            a = state["grad_avg"]
            _lerp_into(a, d, 1.0 - self.alpha, tmp)
            np.multiply(a, a, out=tmp)
            np.subtract(s, tmp, out=tmp)
            r = np.sqrt(tmp, out=tmp)
        else:
            r = np.sqrt(s, out=tmp)
        r += self.eps
        update = self._tmp(p, 2)
        if self.momentum > 0:
            b = state["momentum_buffer"]
            b *= self.momentum
            b += np.divide(d, r, out=update)
            np.multiply(b, self.lr, out=update)
        else:
            np.multiply(d, self.lr, out=update)
            update /= r
        p -= update


# ---- learning-rate schedules ------------------------------------------------------------------
class _Schedule:
    """Sets `optimizer.lr`; `step()` once after each optimiser step. `state_dict()` is JSON-ready.
    Subclasses list the fields that make up their state (`_fields`)."""

    _fields = ()

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must be an rnncore.optim optimiser (with an lr), got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer

    @property
    def lr(self):
        return self.optimizer.lr

    def state_dict(self):
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in self._fields}}

    def _check_state_dict(self, state_dict):
        """Validates without changing anything; returns the field values."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("type") != type(self).__name__:
            raise ValueError(f"the state_dict is of a {state_dict.get('type')} schedule, this "
                             f"one is {type(self).__name__}")
        check_keys(f"{type(self).__name__} state_dict keys", self._fields,
                   [k for k in state_dict if k != "type"], noun="")
        values = {k: state_dict[k] for k in self._fields}
        self._check_fields(values)
        return values

    def _check_fields(self, values):
        pass

    def load_state_dict(self, state_dict):
        """Restores the schedule (and, for the closed-form schedules, the optimiser's lr)."""
        for k, v in self._check_state_dict(state_dict).items():
            setattr(self, k, v)
        self._after_load()
        return self

    def _after_load(self):
        pass


class _ClosedFormSchedule(_Schedule):
    """lr = lr_at(number of steps taken), a function of the step count alone."""

    def __init__(self, optimizer):
        super().__init__(optimizer)
        self.base_lr = float(optimizer.lr)
        self.last_step = 0

    def step(self):
        """Advances one step and sets the optimiser's lr; returns it."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def _after_load(self):
        self.optimizer.lr = self.lr_at(self.last_step)

    def lr_at(self, step):
        raise NotImplementedError


class StepLR(_ClosedFormSchedule):
    """lr = base_lr * gamma ** (step // step_size)  (torch.optim.lr_scheduler.StepLR)."""
    _fields = ("base_lr", "last_step", "step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = step_size
        self.gamma = gamma
        self._check_fields(self.state_dict())
        self.optimizer.lr = self.lr_at(0)

    def _check_fields(self, v):
        _int("step_size", v["step_size"], 1)
        _real("gamma", v["gamma"], low=0.0)
        _real("base_lr", v["base_lr"], low=0.0)
        _int("last_step", v["last_step"], 0)

    def lr_at(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineWarmup(_ClosedFormSchedule):
    """Linear warm-up, then a cosine decay to min_lr (then constant), for s = steps taken:

        s <  warmup_steps:          lr = base_lr * (s + 1) / warmup_steps
        warmup_steps <= s < total:  lr = min_lr + (base_lr - min_lr) (1 + cos(pi q)) / 2,
                                    q = (s - warmup_steps) / (total_steps - warmup_steps)
        s >= total_steps:           lr = min_lr
    """
    _fields = ("base_lr", "last_step", "warmup_steps", "total_steps", "min_lr")

    def __init__(self, optimizer, warmup_steps, total_steps, min_lr=0.0):
        super().__init__(optimizer)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = min_lr
        self._check_fields(self.state_dict())
        self.min_lr = float(min_lr)
        self.optimizer.lr = self.lr_at(0)

    def _check_fields(self, v):
        warmup = _int("warmup_steps", v["warmup_steps"], 0)
        total = _int("total_steps", v["total_steps"], 1)
        if total < warmup:
            raise ValueError(f"total_steps must be >= warmup_steps ({warmup}), got {total}")
        base = _real("base_lr", v["base_lr"], low=0.0)
        _real("min_lr", v["min_lr"], low=0.0, high=base)
        _int("last_step", v["last_step"], 0)

    def lr_at(self, step):
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        q = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))


class ReduceLROnPlateau(_Schedule):
    """Divides lr by 1/factor when a metric stopped improving (torch's ReduceLROnPlateau).

    step(metric) after each evaluation: the metric improves on the best so far when
        mode "min":  metric < best * (1 - threshold) ("rel"),  metric < best - threshold ("abs")
        mode "max":  metric > best * (1 + threshold) ("rel"),  metric > best + threshold ("abs")
    After more than `patience` evaluations without improvement, lr = max(lr * factor, min_lr)
    (unchanged if that moves it by no more than eps), then `cooldown` evaluations are not counted.
    """
    _fields = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown",
               "min_lr", "eps", "best", "num_bad_steps", "cooldown_counter", "last_step")

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 cooldown=0, min_lr=0.0, threshold_mode="rel", eps=1e-8):
        super().__init__(optimizer)
        self.mode, self.factor, self.patience, self.threshold = mode, factor, patience, threshold
        self.threshold_mode, self.cooldown = threshold_mode, cooldown
        self.min_lr, self.eps = min_lr, eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_steps = 0
        self.cooldown_counter = 0
        self.last_step = 0
        self._check_fields(self.state_dict())
        self.factor, self.threshold, self.min_lr, self.eps = (
            float(factor), float(threshold), float(min_lr), float(eps))

    def _check_fields(self, v):
        if v["mode"] not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {v['mode']!r}")
        if v["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {v['threshold_mode']!r}")
        _real("factor", v["factor"], low=0.0, high=1.0, high_open=True)
        _int("patience", v["patience"], 0)
        _real("threshold", v["threshold"], low=0.0)
        _int("cooldown", v["cooldown"], 0)
        _real("min_lr", v["min_lr"], low=0.0)
        _real("eps", v["eps"], low=0.0)
        if isinstance(v["best"], bool) or not isinstance(v["best"], numbers.Real):
            raise ValueError(f"best must be a number, got {v['best']!r}")
        for k in ("num_bad_steps", "cooldown_counter", "last_step"):
            _int(k, v[k], 0)

    def _is_better(self, metric):
        rel = self.threshold_mode == "rel"
        t = self.threshold
        if self.mode == "min":
            return metric < (self.best * (1.0 - t) if rel else self.best - t)
        return metric > (self.best * (1.0 + t) if rel else self.best + t)

    def step(self, metric):
        """Records one evaluation of the metric; may lower the optimiser's lr. Returns the lr."""
        metric = float(metric)
        self.last_step += 1
        if self._is_better(metric):
            self.best = metric
            self.num_bad_steps = 0
        else:
            self.num_bad_steps += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_steps = 0
        if self.num_bad_steps > self.patience:
            old = float(self.optimizer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_steps = 0
        return self.optimizer.lr
