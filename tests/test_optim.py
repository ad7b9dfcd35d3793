"""Optimisers step for step against torch.optim (float64), schedules against torch's schedulers,
state dicts that round-trip exactly and refuse mismatches, clipping."""
import copy
import json
import math

import numpy as np
import pytest

from rnncore.nn.module import Module
from rnncore.optim import (SGD, Adam, AdamW, CosineWarmup, ReduceLROnPlateau, RMSprop, StepLR,
                           clip_grad_norm, clip_grad_value)

STEPS = 7


class Params(Module):
    """Two float64 parameters with gradients set by hand."""

    def __init__(self, seed=0):
        super().__init__(np.float64)
        rng = np.random.default_rng(seed)
        self._add_param("w", rng.standard_normal((4, 3)))
        self._add_param("b", rng.standard_normal(3))


def gradient(rng, p):
    """A gradient that depends on the parameter, like a real loss's (and some noise)."""
    return 0.5 * p + np.sin(3 * p) + 0.3 * rng.standard_normal(p.shape)


CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    (Adam, dict(lr=0.01)),
    (Adam, dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
    (Adam, dict(lr=0.02, betas=(0.3, 0.5), eps=1e-3)),   # torch's other lerp branch
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.05, weight_decay=0.2, amsgrad=True)),
    (RMSprop, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, centered=True, weight_decay=0.05)),
    (RMSprop, dict(lr=0.01, momentum=0.9)),
    (RMSprop, dict(lr=0.005, alpha=0.3, centered=True, momentum=0.5)),
]


@pytest.mark.parametrize("cls,kw", CASES, ids=lambda c: c.__name__ if isinstance(c, type) else
                         ",".join(f"{k}={v}" for k, v in c.items()))
def test_matches_torch_step_for_step(cls, kw):
    torch = pytest.importorskip("torch", reason="PyTorch 2.13 is not installed")
    m = Params()
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in m.params.values()]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    opt = cls(m, **kw)
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        for (name, p), tp in zip(m.params.items(), tparams):
            m.grads[name][...] = gradient(rng, p)
            tp.grad = torch.from_numpy(m.grads[name].copy())
        opt.step()
        topt.step()
    for (name, p), tp in zip(m.params.items(), tparams):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=name)
        for buf, value in opt.state[name].items():
            np.testing.assert_allclose(value, topt.state[tp][buf].numpy(), rtol=1e-12,
                                       atol=1e-14, err_msg=f"{name}.{buf}")
        assert set(opt.state[name]) == set(topt.state[tp]) - {"step"}


@pytest.mark.parametrize("cls,kw", CASES[1::2], ids=lambda c: c.__name__ if isinstance(c, type)
                         else "")
def test_state_dict_round_trip_is_exact(cls, kw):
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    a = Params()
    opt_a = cls(a, **kw)
    for _ in range(3):
        for name, p in a.params.items():
            a.grads[name][...] = gradient(rng_a, p)
            gradient(rng_b, p)
        opt_a.step()
    sd = opt_a.state_dict()
    json.dumps({k: v for k, v in sd.items() if k != "state"})  # the non-tensor part is JSON
    b = copy.deepcopy(a)
    opt_b = cls(b, **{**kw, "lr": 0.123}).load_state_dict(sd)
    assert opt_b.lr == opt_a.lr and opt_b.step_count == 3
    for _ in range(3):
        for m, r in ((a, rng_a), (b, rng_b)):
            for name, p in m.params.items():
                m.grads[name][...] = gradient(r, p)
        opt_a.step()
        opt_b.step()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])


def test_load_state_dict_refuses_mismatches_and_changes_nothing():
    m = Params()
    opt = Adam(m, lr=0.01)
    m.grads["w"][...] = 1
    opt.step()
    sd = opt.state_dict()
    other = Adam(Params(), lr=0.5)
    before = copy.deepcopy(other.state_dict())

    def refused(exc, match, d):
        with pytest.raises(exc, match=match):
            other.load_state_dict(d)
        after = other.state_dict()
        assert other.lr == 0.5 and other.step_count == 0
        for name, bufs in before["state"].items():
            for b, v in bufs.items():
                np.testing.assert_array_equal(after["state"][name][b], v)

    refused(ValueError, "state_dict is of a SGD optimiser, this one is Adam",
            SGD(Params(), lr=0.1).state_dict())
    bad = copy.deepcopy(sd)
    bad["state"]["v"] = bad["state"].pop("w")
    refused(KeyError, r"parameter names: missing \['w'\]; unexpected \['v'\]", bad)
    bad = copy.deepcopy(sd)
    bad["state"]["w"]["exp_avg"] = np.zeros((3, 4))
    refused(ValueError, r"w.exp_avg has shape \(3, 4\), expected \(4, 3\)", bad)
    bad = copy.deepcopy(sd)
    bad["hyperparameters"]["amsgrad"] = True  # needs a max_exp_avg_sq buffer the dict lacks
    refused(KeyError, r"buffers: missing \['max_exp_avg_sq'\]", bad)
    bad = copy.deepcopy(sd)
    bad["hyperparameters"]["betas"] = [0.9, 1.5]
    refused(ValueError, r"betas\[1\] must be < 1.0, got 1.5", bad)
    bad = copy.deepcopy(sd)
    del bad["step"]
    refused(KeyError, r"missing \['step'\]", bad)


def test_constructor_checks():
    m = Params()
    with pytest.raises(ValueError, match="lr must be positive, got 0"):
        SGD(m, lr=0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0 and dampening = 0"):
        SGD(m, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="weight_decay must be >= 0.0, got -1.0"):
        Adam(m, weight_decay=-1)
    with pytest.raises(ValueError, match=r"betas must be a pair"):
        Adam(m, betas=0.9)
    with pytest.raises(ValueError, match="modules must hold at least one module"):
        Adam([])
    with pytest.raises(TypeError, match="modules must be rnncore modules"):
        Adam(object())


def test_list_of_modules_names_zero_grad_and_legacy_attributes():
    a, b = Params(0), Params(1)
    opt = Adam([a, b], lr=0.1)
    assert opt.param_names == ["0.w", "0.b", "1.w", "1.b"]
    for m in (a, b):
        for g in m.grads.values():
            g[...] = 1
    opt.step()
    assert opt.t == 1 and len(opt.m) == len(opt.v) == 4 and len(opt.pairs) == 4
    opt.zero_grad()
    assert not any(g.any() for m in (a, b) for g in m.grads.values())
    assert len(SGD(a, 0.1, 0.9).velocity) == 2 and SGD(a, 0.1).velocity == []


def test_clipping():
    m = Params()
    m.grads["w"][...] = 0
    m.grads["b"][...] = [3.0, 4.0, 0.0]
    assert clip_grad_norm(m, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(m.grads["b"], [0.6, 0.8, 0.0])
    m.grads["b"][...] = [3.0, -4.0, 0.5]
    clip_grad_value([m], 1.0)
    np.testing.assert_array_equal(m.grads["b"], [1.0, -1.0, 0.5])
    with pytest.raises(ValueError, match="clip must be a positive number"):
        clip_grad_value(m, 0)


# ---- schedules ----------------------------------------------------------------------------------
def torch_pair(lr):
    torch = pytest.importorskip("torch", reason="PyTorch 2.13 is not installed")
    return torch, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def test_step_lr_matches_torch():
    torch, topt = torch_pair(0.5)
    opt = SGD(Params(), lr=0.5)
    sched = StepLR(opt, step_size=3, gamma=0.7)
    tsched = torch.optim.lr_scheduler.StepLR(topt, 3, 0.7)
    for _ in range(12):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()


@pytest.mark.parametrize("kw", [dict(), dict(mode="max", factor=0.5, patience=2, cooldown=1),
                                dict(threshold_mode="abs", threshold=0.05, patience=1,
                                     min_lr=0.02)])
def test_reduce_on_plateau_matches_torch(kw):
    torch, topt = torch_pair(0.4)
    opt = SGD(Params(), lr=0.4)
    sched = ReduceLROnPlateau(opt, **kw)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    metrics = [1.0, 0.9, 0.9, 0.95, 0.9, 0.899, 0.9, 1.0, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.2] * 2
    lrs = []
    for v in metrics:
        topt.step()
        sched.step(v)
        tsched.step(v)
        lrs.append(opt.lr)
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
    assert len(set(lrs)) > 1  # the sequence does trigger reductions


def test_cosine_warmup_values():
    opt = Adam(Params(), lr=1.0)
    sched = CosineWarmup(opt, warmup_steps=4, total_steps=14, min_lr=0.1)
    lrs = [opt.lr] + [sched.step() for _ in range(16)]
    np.testing.assert_allclose(lrs[:5], [0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[9] == pytest.approx(0.55)  # half-way through the cosine: (base + min) / 2
    assert all(x > y for x, y in zip(lrs[4:14], lrs[5:14]))
    assert lrs[14:] == [0.1, 0.1, 0.1]
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError, match="total_steps must be >= warmup_steps"):
        CosineWarmup(opt, 5, 3)
    with pytest.raises(ValueError, match="min_lr must be <="):
        CosineWarmup(Adam(Params(), lr=0.01), 1, 3, min_lr=0.5)


@pytest.mark.parametrize("make", [lambda o: StepLR(o, 2, 0.5), lambda o: CosineWarmup(o, 3, 10),
                                  lambda o: ReduceLROnPlateau(o, patience=1)])
def test_schedule_state_dict_round_trip(make):
    opt = SGD(Params(), lr=0.3)
    s = make(opt)
    metrics = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]

    def advance(sched, i):
        return sched.step(metrics[i]) if isinstance(sched, ReduceLROnPlateau) else sched.step()

    for i in range(4):
        advance(s, i)
    sd = json.loads(json.dumps(s.state_dict()))
    opt2 = SGD(Params(), lr=0.3)
    s2 = make(opt2)
    opt2.lr = opt.lr  # an optimiser's lr comes back with its own state dict
    s2.load_state_dict(sd)
    assert opt2.lr == opt.lr
    assert [advance(s, i) for i in range(4, 8)] == [advance(s2, i) for i in range(4, 8)]
    with pytest.raises(ValueError, match="state_dict is of a"):
        s2.load_state_dict({**sd, "type": "Other"})
    with pytest.raises(KeyError, match="missing"):
        s2.load_state_dict({"type": sd["type"]})
