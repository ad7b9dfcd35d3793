"""The module protocol (rnncore.nn.module: Tape, StepTape): every module that has a backward
keeps what it consumes the same way.

For each of them: backward without a training forward raises the one RuntimeError; under
rnncore.no_grad() a forward records nothing (and leaves a pending record as it was); backward
consumes its record exactly once; a bad argument to backward raises and keeps the record; eval()
drops it. Then the Tape itself: one slot, which thread's forward a backward consumes."""
import copy
import re
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import rnncore
from conftest import CELLS, make_cell, make_module
from rnncore.models.captioner import CELL, GRID, VOCABULARY, Captioner
from rnncore.models.lm import LanguageModel
from rnncore.models.recognizer import HEIGHT, Recognizer
from rnncore.models.sentiment import SentimentClassifier
from rnncore.models.trigger import BINS, TriggerDetector
from rnncore.nn.attention import Attention
from rnncore.nn.model import Model
from rnncore.nn.module import Tape, needs_forward
from rnncore.seq2seq import Seq2Seq

f64 = np.float64

# The one wording (needs_forward), for a whole forward or a step of the step-by-step modules.
NEEDS_FORWARD = (r"\.backward\(\) needs a preceding training-mode forward( step)? that has not "
                 r"been back-propagated yet \(never run, run in eval mode or under no_grad\(\), "
                 r"or already consumed by backward\)")


@dataclass
class Case:
    """make() -> module; inputs(rng) -> forward's arguments; grad(out) -> backward's good
    arguments from forward's output, bad(out) -> arguments backward refuses (ValueError);
    owner: the class named by the error of a backward without a forward (the first child
    a delegating model back-propagates, when it keeps no record of its own)."""
    make: Callable
    inputs: Callable
    grad: Callable
    bad: Callable
    owner: str


def _ones(out):
    return (np.ones_like(out),)


def _wider(out):
    return (np.ones(out.shape[:-1] + (out.shape[-1] + 1,)),)


def _first(out):
    return (np.ones_like(out[0]),)


def _first_wider(out):
    return _wider(out[0])


def _state_grad(state):
    return (tuple(np.ones_like(s) for s in state) if isinstance(state, tuple)
            else np.ones_like(state),)


def _state_bad(state):
    first = state[0] if isinstance(state, tuple) else state
    bad = np.ones((first.shape[0], first.shape[1] + 1))
    return ((bad, bad) if isinstance(state, tuple) else bad,)


def _tokens(vocab, shape):
    return lambda rng: (rng.integers(0, vocab, shape),)


CASES = {
    "Linear": Case(lambda: rnncore.Linear(3, 4, dtype=f64, seed=0),
                   lambda rng: (rng.standard_normal((5, 3)),), _ones, _wider, "Linear"),
    "Embedding": Case(lambda: rnncore.Embedding(7, 3, dtype=f64, seed=0), _tokens(7, (4, 2)),
                      _ones, _wider, "Embedding"),
    "Dropout": Case(lambda: rnncore.Dropout(0.5, seed=0, dtype=f64),
                    lambda rng: (rng.standard_normal((5, 3)),), _ones, _wider, "Dropout"),
    "LayerNorm": Case(lambda: rnncore.LayerNorm(3, dtype=f64),
                      lambda rng: (rng.standard_normal((5, 3)),), _ones, _wider, "LayerNorm"),
    "PyramidEncoder": Case(lambda: rnncore.PyramidEncoder(3, 4, num_layers=2, dtype=f64, seed=0),
                           lambda rng: (rng.standard_normal((6, 2, 3)),), _first, _first_wider,
                           "PyramidEncoder"),
    "Seq2Seq": Case(lambda: Seq2Seq(7, 6, embed=3, hidden=4, dtype=f64, seed=1),
                    lambda rng: (rng.integers(0, 7, (5, 2)), rng.integers(0, 6, (3, 2))),
                    _ones, _wider, "Seq2Seq"),
    "Captioner": Case(lambda: Captioner(features=8, hidden=12, embed=6, attention=5, seed=3,
                                        dtype=f64),
                      lambda rng: (rng.random((2, GRID * CELL, GRID * CELL, 3)),
                                   rng.integers(0, len(VOCABULARY), (4, 2))),
                      _ones, _wider, "Captioner"),
    "SentimentClassifier": Case(lambda: SentimentClassifier("gru", embed=4, hidden=5, seed=1,
                                                            dtype=f64),
                                lambda rng: (rng.integers(0, 20, (6, 3)), np.array([6, 2, 4])),
                                _ones, _wider, "SentimentClassifier"),
    "LanguageModel": Case(lambda: LanguageModel(7, embed=3, hidden=4, layers=1, cell="gru",
                                                seed=0, dtype=f64),
                          _tokens(7, (5, 2)), _first, _first_wider, "Linear"),
    "TriggerDetector": Case(lambda: TriggerDetector("gru", hidden=5, layers=1, dtype=f64),
                            lambda rng: (rng.standard_normal((6, 2, BINS)),), _ones,
                            lambda out: (np.ones((out.shape[0], out.shape[1] + 1)),), "Linear"),
    "Recognizer": Case(lambda: Recognizer(hidden=4, layers=1, dtype=f64),
                       lambda rng: (rng.standard_normal((6, 2, HEIGHT)), np.array([6, 4])),
                       _first, _first_wider, "Linear"),
    "Attention": Case(lambda: Attention(4, 5, dtype=f64, seed=0),
                      lambda rng: (rng.standard_normal((2, 4)), rng.standard_normal((3, 2, 5))),
                      _first, _first_wider, "Attention"),
}
for _cell in CELLS:
    CASES[f"module-{_cell}"] = Case(
        lambda cell=_cell: make_module(cell, 3, 4, dtype=f64, seed=0),
        lambda rng: (rng.standard_normal((5, 2, 3)),), _first, _first_wider, None)
    CASES[f"cell-{_cell}"] = Case(
        lambda cell=_cell: make_cell(cell, 3, 4, dtype=f64, seed=0),
        lambda rng: (rng.standard_normal((2, 3)),),
        lambda state: _state_grad(state), lambda state: _state_bad(state), None)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return CASES[request.param]


def _owner(case, m):
    return case.owner or type(m).__name__


def _pending(m):
    """Records any backward of m or of its children would consume."""
    own = 0 if m._pending is None else len(m._pending)
    if isinstance(m, Model):
        own += sum(_pending(child) for _, child in m.named_children())
    return own


def _grads(m):
    return {k: np.array(v) for k, v in m.grads.items()}


def test_backward_without_a_forward_raises_the_one_error(case):
    m = case.make()
    out = m(*case.inputs(np.random.default_rng(0)))
    m.eval()  # drops the record
    with pytest.raises(RuntimeError, match=re.escape(_owner(case, m)) + NEEDS_FORWARD):
        m.backward(*case.grad(out))
    fresh = case.make()
    with pytest.raises(RuntimeError, match=re.escape(_owner(case, fresh)) + NEEDS_FORWARD):
        fresh.backward(*case.grad(out))


def test_the_wording_comes_from_one_place():
    assert re.fullmatch("LSTM" + NEEDS_FORWARD, str(needs_forward("LSTM")))
    assert re.fullmatch("GRUCell" + NEEDS_FORWARD, str(needs_forward("GRUCell", "forward step")))


def test_no_grad_records_nothing_and_leaves_a_pending_record_alone(case):
    rng = np.random.default_rng(1)
    args, other = case.inputs(rng), case.inputs(rng)
    m = case.make()
    assert m.training
    with rnncore.no_grad():
        out = m(*args)
    assert _pending(m) == 0
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        m.backward(*case.grad(out))
    # a training forward, then one under no_grad() on other input: backward still goes
    # through the training forward, as if the no_grad() forward had not happened
    plain, mixed = case.make(), case.make()
    out = plain(*args)
    want = plain.backward(*case.grad(out))
    out = mixed(*args)
    before = _pending(mixed)
    with rnncore.no_grad():
        mixed(*other)
    assert _pending(mixed) == before
    got = mixed.backward(*case.grad(out))
    _assert_same(got, want)
    for k, g in _grads(plain).items():
        np.testing.assert_allclose(mixed.grads[k], g, rtol=1e-12, atol=1e-15, err_msg=k)


def _assert_same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for a, b in zip(got, want):
            _assert_same(a, b)
    elif want is None:
        assert got is None
    else:  # the same arithmetic; numpy's sums may still round by the arrays' alignment
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_backward_consumes_the_record_exactly_once(case):
    m = case.make()
    out = m(*case.inputs(np.random.default_rng(2)))
    m.backward(*case.grad(out))
    assert _pending(m) == 0
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        m.backward(*case.grad(out))


def test_a_bad_argument_to_backward_keeps_the_record(case):
    m = case.make()
    args = case.inputs(np.random.default_rng(3))
    out = m(*args)
    pending = _pending(m)
    with pytest.raises(ValueError):
        m.backward(*case.bad(out))
    assert _pending(m) == pending
    got = m.backward(*case.grad(out))
    plain = case.make()
    want = plain.backward(*case.grad(plain(*args)))
    _assert_same(got, want)
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        m.backward(*case.grad(out))


def test_eval_drops_the_record_and_a_copy_has_none(case):
    m = case.make()
    out = m(*case.inputs(np.random.default_rng(4)))
    twin = copy.deepcopy(m)
    assert _pending(twin) == 0
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        twin.backward(*case.grad(out))
    m.train(False)
    assert _pending(m) == 0
    m.train()
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        m.backward(*case.grad(out))


# ---- the Tape itself ----------------------------------------------------------------------------

def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001 (handed back to the test)
            box["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return box


def test_tape_is_one_slot_consumed_once():
    tape = Tape("Thing")
    assert len(tape) == 0 and tape.pending is None
    with pytest.raises(RuntimeError, match="Thing" + NEEDS_FORWARD):
        tape.last()
    tape.push("a")
    tape.push("b")  # replaces "a"
    assert len(tape) == 1 and tape.pending == "b" and tape.last() == "b"
    assert tape.pop() == "b"
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        tape.last()
    tape.push("c")
    tape.clear()
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        tape.last()


def test_tape_refuses_a_thread_whose_forward_another_thread_replaced():
    tape = Tape("Thing")
    tape.push("mine")
    assert _in_thread(lambda: tape.push("theirs")) == {"value": None}
    with pytest.raises(RuntimeError, match="this thread's training forward was replaced by a "
                                           "later training forward from another thread"):
        tape.last()
    assert _in_thread(tape.last) == {"value": "theirs"}  # the other thread takes its own
    assert _in_thread(tape.pop) == {"value": "theirs"}
    # discard() (a forward that reuses the workspace) voids the record but keeps the claims:
    # when another thread's forward then records, this thread is refused, not handed it
    tape.push("again")
    tape.discard()
    with pytest.raises(RuntimeError, match=NEEDS_FORWARD):
        tape.last()
    _in_thread(lambda: tape.push("other"))
    with pytest.raises(RuntimeError, match="replaced by a later training forward"):
        tape.last()
    tape.clear()  # eval(): no claims either
    tape.push("fresh")
    assert tape.last() == "fresh" and tape.pop() == "fresh"
