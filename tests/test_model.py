"""Model and Sequential: named children, one flat live parameter set, modes, state dicts, copies;
and the gradient checker itself (it must catch a wrong backward)."""
import copy
import pickle

import numpy as np
import pytest

import rnncore
from rnncore.optim import SGD, Adam

f64 = np.float64


class CharLM(rnncore.Model):
    """Embedding -> LSTM -> Linear over time-major token ids (T, B); the docs' example."""

    def __init__(self, vocab, embed, hidden, dtype=np.float32, seed=0):
        super().__init__()
        self.embed = rnncore.Embedding(vocab, embed, dtype=dtype, seed=seed)
        self.rnn = rnncore.LSTM(embed, hidden, dtype=dtype, seed=seed + 1)
        self.head = rnncore.Linear(hidden, vocab, dtype=dtype, seed=seed + 2)

    def forward(self, tokens, state=None):
        h, state = self.rnn(self.embed(tokens), state)
        return self.head(h), state

    def backward(self, dlogits, dstate=None):
        dh, dstate0 = self.rnn.backward(self.head.backward(dlogits), dstate)
        self.embed.backward(dh)
        return None, dstate0


def test_children_and_flat_live_parameters():
    m = CharLM(11, 4, 5)
    assert [n for n, _ in m.named_children()] == ["embed", "rnn", "head"]
    assert list(m.params) == ["embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                              "rnn.bias_ih_l0", "rnn.bias_hh_l0", "head.weight", "head.bias"]
    assert list(m.grads) == list(m.params)
    assert m.params["rnn.weight_ih_l0"] is m.rnn.params["weight_ih_l0"]
    assert m.grads["head.bias"] is m.head.grads["bias"]
    assert m.num_parameters() == sum(c.num_parameters() for _, c in m.named_children())
    assert m.rnn is m._modules["rnn"] and "rnn" not in vars(m)
    m.head = rnncore.Linear(5, 3)  # re-assigning replaces the child in place of order
    assert list(m.params)[-1] == "head.bias" and m.params["head.weight"].shape == (3, 5)
    m.head = None  # a non-module value removes the child
    assert "head.weight" not in m.params and m.head is None
    del m.head
    with pytest.raises(AttributeError):
        m.head


def test_nested_models_and_sequential_names():
    class Outer(rnncore.Model):
        def __init__(self):
            super().__init__()
            self.encoder = rnncore.Sequential(rnncore.Linear(2, 3), rnncore.LayerNorm(3))
            self.decoder = rnncore.Linear(3, 2)

    o = Outer()
    assert list(o.params) == ["encoder.0.weight", "encoder.0.bias", "encoder.1.weight",
                              "encoder.1.bias", "decoder.weight", "decoder.bias"]
    assert o.state_dict()["encoder.1.weight"].tolist() == [1, 1, 1]


def test_registration_errors():
    class Forgot(rnncore.Model):
        def __init__(self):
            self.lin = rnncore.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"call super\(\).__init__\(\) first"):
        Forgot()
    m = rnncore.Model()
    for bad in ("", "a.b", 3):
        with pytest.raises(ValueError, match="name without '.'|non-empty string"):
            m.add_module(bad, rnncore.Linear(1, 1))
    with pytest.raises(TypeError, match="module must be an rnncore Module"):
        m.add_module("x", object())
    with pytest.raises(NotImplementedError, match="must define forward"):
        m(np.zeros(1))


def test_whole_model_gradients_by_finite_differences(rng):
    m = CharLM(6, 3, 4, dtype=f64, seed=3)
    tokens = rng.integers(0, 6, (5, 2))
    state = (rng.standard_normal((1, 2, 4)), rng.standard_normal((1, 2, 4)))
    report = rnncore.check_gradients(m, (tokens, state), max_entries=24)
    assert [c.name for c in report.checks][:2] == ["input 1[0]", "input 1[1]"]
    assert report.ok and len(report.checks) == 2 + len(m.params)


def test_modes_and_zero_grad_reach_every_child(rng):
    m = CharLM(6, 3, 4)
    m.eval()
    assert not m.training and not any(c.training for _, c in m.named_children())
    m.train()
    assert all(c.training for _, c in m.named_children())
    logits, _ = m(rng.integers(0, 6, (3, 2)))
    m.backward(np.ones_like(logits))
    assert all(g.any() for g in m.grads.values())
    m.zero_grad()
    assert not any(g.any() for g in m.grads.values())


def test_optimiser_updates_the_children_in_place(rng):
    m = CharLM(6, 3, 4)
    before = {k: v.copy() for k, v in m.params.items()}
    opt = Adam(m, lr=0.1)
    assert opt.param_names == list(m.params)
    logits, _ = m(rng.integers(0, 6, (3, 2)))
    m.backward(rng.standard_normal(logits.shape))
    opt.step()
    for k in before:
        assert not np.array_equal(before[k], m.params[k]), k
    assert m.rnn.params["weight_hh_l0"] is m.params["rnn.weight_hh_l0"]


def test_state_dict_round_trip_and_all_or_nothing_errors(rng):
    a, b = CharLM(6, 3, 4, seed=1), CharLM(6, 3, 4, seed=2)
    b.load_state_dict(a.state_dict())
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    sd = a.state_dict()
    assert all(sd[k] is not a.params[k] for k in sd)  # copies

    c = CharLM(6, 3, 4, seed=3)
    before = c.state_dict()
    missing = {k: v for k, v in sd.items() if k != "head.bias"}
    with pytest.raises(KeyError, match=r"missing keys \['head.bias'\]"):
        c.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected keys \['extra.w'\]"):
        c.load_state_dict({**sd, "extra.w": np.zeros(1)})
    bad = dict(sd)
    bad["head.bias"] = np.zeros(7)  # the last key: every earlier one would have been fine
    with pytest.raises(ValueError, match=r"head.bias has shape \(7,\), expected \(6,\)"):
        c.load_state_dict(bad)
    for k, v in before.items():
        np.testing.assert_array_equal(c.params[k], v)
    c.load_state_dict(missing, strict=False)
    np.testing.assert_array_equal(c.params["embed.weight"], sd["embed.weight"])
    np.testing.assert_array_equal(c.params["head.bias"], before["head.bias"])


def test_tied_weights_are_counted_and_updated_once():
    class Tied(rnncore.Model):
        def __init__(self):
            super().__init__()
            self.a = rnncore.Linear(2, 2, seed=0)
            self.b = self.a

    t = Tied()
    assert list(t.params) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert t.num_parameters() == 6
    t.a.grads["weight"][...] = 1.0
    w = t.a.params["weight"].copy()
    SGD(t, lr=0.5).step()
    np.testing.assert_allclose(t.a.params["weight"], w - 0.5)


def test_copies_compute_the_same_and_have_no_pending_backward(rng):
    m = CharLM(6, 3, 4, seed=5)
    tokens = rng.integers(0, 6, (4, 2))
    logits, _ = m(tokens)
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert list(c.params) == list(m.params)
        assert c.params["rnn.weight_ih_l0"] is c.rnn.params["weight_ih_l0"]
        assert c.params["rnn.weight_ih_l0"] is not m.params["rnn.weight_ih_l0"]
        with pytest.raises(RuntimeError):
            c.backward(np.ones_like(logits))
        np.testing.assert_array_equal(c(tokens)[0], logits)
    assert "CharLM(\n  (embed): Embedding(6, 3" in repr(m)


def test_sequential(rng):
    s = rnncore.Sequential(rnncore.Linear(3, 5, dtype=f64, seed=1), rnncore.LayerNorm(5, dtype=f64),
                           rnncore.Dropout(0.3, seed=2, dtype=f64),
                           rnncore.Linear(5, 2, dtype=f64, seed=3))
    assert len(s) == 4 and isinstance(s[1], rnncore.LayerNorm) and list(s)[3] is s[3]
    rnncore.check_gradients(s, rng.standard_normal((4, 2, 3)))
    e = rnncore.Sequential(rnncore.Embedding(5, 3, dtype=f64), rnncore.Linear(3, 2, dtype=f64))
    rnncore.check_gradients(e, rng.integers(0, 5, (4,)))
    with pytest.raises(TypeError, match=r"module 0 \(LSTM\) returned a tuple"):
        rnncore.Sequential(rnncore.LSTM(3, 2))(np.zeros((2, 1, 3)))

    class NoInputGradient(rnncore.Linear):
        def backward(self, dy):
            super().backward(dy)

    s3 = rnncore.Sequential(rnncore.Linear(2, 2), NoInputGradient(2, 2))
    s3(np.zeros((1, 2)))
    with pytest.raises(TypeError, match=r"module 1 \(NoInputGradient\) returns no input gradient"):
        s3.backward(np.zeros((1, 2)))


# ---- the checker itself -------------------------------------------------------------------------
class WrongLinear(rnncore.Linear):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["bias"] *= 1.01  # a 1 % error in one parameter's gradient
        return dx


def test_checker_catches_a_wrong_parameter_gradient(rng):
    m = WrongLinear(3, 2, dtype=f64, seed=0)
    with pytest.raises(AssertionError, match=r"param bias\[\d\] analytic .* numeric"):
        rnncore.check_gradients(m, rng.standard_normal((4, 3)))
    report = rnncore.check_gradients(m, rng.standard_normal((4, 3)), raise_on_failure=False)
    assert not report.ok and report.worst.name == "param bias"
    assert [c.ok for c in report.checks] == [True, True, False]


def test_checker_catches_a_wrong_or_missing_input_gradient(rng):
    class Halves(rnncore.Linear):
        def backward(self, dy):
            return super().backward(dy) * 0.5

    with pytest.raises(AssertionError, match="input 0"):
        rnncore.check_gradients(Halves(3, 2, dtype=f64), rng.standard_normal((4, 3)))

    class Nothing(rnncore.Linear):
        def backward(self, dy):
            super().backward(dy)

    with pytest.raises(AssertionError, match="backward returned no gradient for input 0"):
        rnncore.check_gradients(Nothing(3, 2, dtype=f64), rng.standard_normal((4, 3)))
    rnncore.check_gradients(Nothing(3, 2, dtype=f64), rng.standard_normal((4, 3)),
                            check_inputs=False)


def test_checker_leaves_the_module_as_it_was_and_samples_large_arrays(rng):
    m = rnncore.LSTM(3, 20, dtype=f64, seed=1).eval()
    m.grads["weight_hh_l0"][...] = 7.0
    params = {k: v.copy() for k, v in m.params.items()}
    x = rng.standard_normal((4, 2, 3))
    report = rnncore.check_gradients(m, (x,), forward_kwargs={"lengths": np.array([4, 2])},
                                     max_entries=10)
    assert {c.name: c.checked for c in report.checks}["param weight_hh_l0"] == 10
    assert not m.training
    assert (m.grads["weight_hh_l0"] == 7.0).all() and not m.grads["weight_ih_l0"].any()
    for k, v in params.items():
        np.testing.assert_array_equal(m.params[k], v)
    with pytest.raises(ValueError, match="needs float64 parameters, got float32"):
        rnncore.check_gradients(rnncore.Linear(2, 2), np.zeros((1, 2)))
    with pytest.raises(RuntimeError):
        m.backward(np.zeros((4, 2, 20)))


def test_named_parameters_walk_each_array_once():
    net = rnncore.Sequential(rnncore.Linear(3, 4, seed=0), rnncore.Linear(4, 2, seed=1))
    names = [n for n, _ in net.named_parameters()]
    assert names == list(net.params)
    assert all(p is net.params[n] for n, p in net.named_parameters())
    assert [id(p) for p in net.parameters()] == [id(p) for p in net.params.values()]
    tied = rnncore.Sequential(net[0], net[0])  # the same module twice: its arrays once
    assert len(tied.named_parameters()) == 2
    assert tied.named_parameters(prefix="m.")[0][0] == "m.0.weight"
    lstm = rnncore.LSTM(3, 5, num_layers=2, seed=0)
    assert [n for n, _ in lstm.named_parameters()] == list(lstm.params)
