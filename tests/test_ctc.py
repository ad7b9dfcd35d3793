"""CTC (rnncore.ctc): loss and gradient against torch's ctc_loss, the numpy reference and a brute
force sum over all alignments; decoding; bad inputs."""
import itertools

import numpy as np
import pytest

import rnncore
from rnncore.ctc import (ctc_loss, ctc_loss_reference, greedy_decode, log_softmax,
                         prefix_beam_search)


def _batch(rng, T=14, B=6, C=7, S=5, dtype=np.float64, blank=0):
    z = rng.standard_normal((T, B, C)).astype(dtype)
    labels = [c for c in range(C) if c != blank]
    targets = rng.choice(labels, size=(B, S))
    targets[0, :3] = targets[0, 0]              # repeats need blanks between them
    input_lengths = rng.integers(2 * S + 1, T + 1, size=B)
    input_lengths[1] = T
    target_lengths = rng.integers(0, S + 1, size=B)
    target_lengths[0], target_lengths[2] = S, 0  # an empty target: all blanks
    return z, targets, input_lengths, target_lengths


def _torch_ctc(z, targets, input_lengths, target_lengths, blank, reduction, zero_infinity):
    torch = pytest.importorskip("torch", reason="torch is the independent oracle of CTC")
    zt = torch.tensor(z, requires_grad=True)
    loss = torch.nn.functional.ctc_loss(
        zt.log_softmax(-1), torch.tensor(targets), torch.tensor(input_lengths),
        torch.tensor(target_lengths), blank=blank, reduction=reduction,
        zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("blank", [0, 4])
def test_matches_torch(rng, dtype, reduction, blank):
    z, tg, il, tl = _batch(rng, dtype=dtype, blank=blank)
    loss, grad = ctc_loss(log_softmax(z), tg, il, tl, blank=blank, reduction=reduction)
    ref_loss, ref_grad = _torch_ctc(z, tg, il, tl, blank, reduction, False)
    assert grad.dtype == dtype and grad.shape == z.shape
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, ref_loss, **tol)
    np.testing.assert_allclose(grad, ref_grad, **tol)
    for b in range(z.shape[1]):  # no gradient past a sample's input length
        assert not grad[il[b]:, b].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_impossible_alignment_matches_torch(rng, dtype, zero_infinity, reduction):
    z, tg, il, tl = _batch(rng, T=8, B=4, S=3, dtype=dtype)
    tg[1] = [2, 2, 2]          # needs 5 frames, has 4: impossible
    il[1], tl[1] = 4, 3
    loss, grad = ctc_loss(log_softmax(z), tg, il, tl, reduction=reduction,
                          zero_infinity=zero_infinity)
    ref_loss, ref_grad = _torch_ctc(z, tg, il, tl, 0, reduction, zero_infinity)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, ref_loss, **tol)  # inf where torch has inf
    np.testing.assert_allclose(grad, ref_grad, **tol)  # NaN exactly where torch has NaN
    if zero_infinity:
        assert np.isfinite(loss).all() and not grad[:, 1].any()
    else:
        assert np.isnan(grad[:4, 1]).all() and not grad[4:, 1].any()
        assert np.isfinite(grad[:, [0, 2, 3]]).all()  # the other samples are untouched


def test_reference_and_gradient_by_finite_differences(rng):
    z, tg, il, tl = _batch(rng, T=9, B=3, C=5, S=3)
    lp = log_softmax(z)
    losses, grad = ctc_loss(lp, tg, il, tl, reduction="none")
    np.testing.assert_allclose(losses, ctc_loss_reference(lp, tg, il, tl), rtol=1e-12)
    eps, weights = 1e-6, np.array([0.7, -1.3, 2.1])
    # "none" returns the gradient of the sum; weigh the samples differently by hand.
    numeric = np.zeros_like(z)
    for idx in itertools.product(*map(range, z.shape)):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        numeric[idx] = (ctc_loss_reference(log_softmax(zp), tg, il, tl)
                        - ctc_loss_reference(log_softmax(zm), tg, il, tl)) @ weights / (2 * eps)
    analytic = grad * weights[None, :, None]
    np.testing.assert_allclose(analytic, numeric, atol=1e-7)


def _brute_force(lp, target, blank):
    """-log of the summed probability of every frame labelling that collapses to target."""
    T, C = lp.shape
    total = -np.inf
    for path in itertools.product(range(C), repeat=T):
        collapsed = [c for i, c in enumerate(path) if c != blank and (i == 0 or path[i - 1] != c)]
        if collapsed == list(target):
            total = np.logaddexp(total, sum(lp[t, c] for t, c in enumerate(path)))
    return -total


@pytest.mark.parametrize("target", [[], [1], [1, 1], [1, 2], [2, 1, 2], [1, 1, 1]])
def test_brute_force_over_all_alignments(rng, target):
    T, C = 5, 3
    lp = log_softmax(rng.standard_normal((T, 1, C)))
    padded = np.array([target + [0] * (3 - len(target))])
    loss, _ = ctc_loss(lp, padded, [T], [len(target)], reduction="sum")
    np.testing.assert_allclose(loss, _brute_force(lp[:, 0], target, 0), rtol=1e-12)


def test_target_forms_threads_and_float32_input(rng):
    z, tg, il, tl = _batch(rng)
    lp = log_softmax(z)
    padded = ctc_loss(lp, tg, il, tl)
    concatenated = ctc_loss(lp, np.concatenate([tg[b, :tl[b]] for b in range(len(tl))]), il, tl)
    listed = ctc_loss(lp, [tg[b, :tl[b]].tolist() for b in range(len(tl))], il)
    assert padded[0] == concatenated[0] == listed[0]
    np.testing.assert_array_equal(padded[1], listed[1])
    rnncore.set_num_threads(1)
    one = ctc_loss(lp, tg, il, tl)
    rnncore.set_num_threads(2)
    two = ctc_loss(lp, tg, il, tl)
    assert one[0] == two[0] and np.array_equal(one[1], two[1])
    empty_loss, empty_grad = ctc_loss(np.zeros((4, 0, 3)), np.zeros((0, 2), np.int64), [], [])
    assert empty_loss == 0.0 and empty_grad.shape == (4, 0, 3)


@pytest.mark.parametrize("change, error, words", [
    (dict(il=[3, 9, 9]), ValueError, ["target_lengths[0] = 4", "input_lengths[0] = 3"]),
    (dict(il=[9, 10, 9]), ValueError, ["input_lengths[1]", "[1, 9]", "10"]),
    (dict(il=[9, 0, 9]), ValueError, ["input_lengths[1]", "[1, 9]", "got 0"]),
    (dict(tl=[4, 5, 1]), ValueError, ["target_lengths[1]", "[0, 4]", "5"]),
    (dict(tl=[4, -1, 1]), ValueError, ["target_lengths[1]", "-1"]),
    (dict(blank=5), ValueError, ["blank", "[0, 5)", "got 5"]),
    (dict(blank=-1), ValueError, ["blank", "got -1"]),
    (dict(tg=[[1, 2, 0, 3], [1, 1, 1, 1], [2, 2, 2, 2]]), ValueError,
     ["targets[0, 2]", "other than blank = 0", "got 0"]),
    (dict(tg=[[1, 2, 7, 3], [1, 1, 1, 1], [2, 2, 2, 2]]), ValueError, ["targets[0, 2]", "got 7"]),
    (dict(il=[9, 9]), ValueError, ["input_lengths", "(3,)", "(2,)"]),
    (dict(lp=np.zeros((9, 5))), ValueError, ["log_probs", "(T, B, C)", "(9, 5)"]),
    (dict(lp=np.zeros((0, 3, 5))), ValueError, ["input_lengths[0]", "[1, 0]"]),
    (dict(reduction="avg"), ValueError, ["reduction", "'avg'"]),
    (dict(tg=np.zeros((3, 4))), TypeError, ["targets", "integer", "float64"]),
])
def test_bad_inputs(change, error, words):
    args = dict(lp=log_softmax(np.zeros((9, 3, 5))), tg=[[1, 2, 3, 4], [1, 1, 1, 1], [2, 2, 2, 2]],
                il=[9, 9, 9], tl=[4, 4, 1], blank=0, reduction="mean")
    args.update(change)
    with pytest.raises(error) as e:
        ctc_loss(args["lp"], np.asarray(args["tg"]), args["il"], args["tl"], blank=args["blank"],
                 reduction=args["reduction"])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def _frames(*rows):
    """log-probabilities (T, 1, C) from rows of probabilities."""
    p = np.array(rows, dtype=np.float64)
    return np.log(p / p.sum(1, keepdims=True))[:, None, :]


def test_greedy_decode_collapses_and_respects_lengths():
    lp = np.log(np.full((6, 2, 4), 0.1))
    for t, (a, b) in enumerate([(1, 2), (1, 0), (0, 2), (1, 3), (2, 3), (2, 1)]):
        lp[t, 0, a] = lp[t, 1, b] = 0.0
    assert greedy_decode(lp) == [[1, 1, 2], [2, 2, 3, 1]]
    assert greedy_decode(lp, input_lengths=[4, 2]) == [[1, 1], [2]]
    assert greedy_decode(lp, input_lengths=[0, 6], blank=3) == [[], [2, 0, 2, 1]]


def test_beam_search_beats_greedy_on_a_hand_built_case():
    # Each frame: blank 0.4, "1" 0.35, "2" 0.25. Best path is all blanks (empty labelling,
    # p = 0.4^3 = 0.064), but the labelling "1" collects many paths and is more probable.
    lp = _frames([0.4, 0.35, 0.25], [0.4, 0.35, 0.25], [0.4, 0.35, 0.25])
    assert greedy_decode(lp) == [[]]
    (best, score), = prefix_beam_search(lp, beam_width=4)[0][:1]
    assert best == [1]
    loss, _ = ctc_loss(lp, [[1]], [3], [1], reduction="sum")
    np.testing.assert_allclose(score, -loss, rtol=1e-12)   # its exact probability
    assert score > np.log(0.064)


def test_beam_search_finds_the_brute_force_best_labelling(rng):
    T, C = 5, 3
    for trial in range(5):
        lp = log_softmax(rng.standard_normal((T, 2, C)) * 2)
        found = prefix_beam_search(lp, input_lengths=[T, 4], beam_width=C ** T, n_best=3)
        for b, length in enumerate([T, 4]):
            scores = {}
            for labels in itertools.chain.from_iterable(
                    itertools.product([1, 2], repeat=n) for n in range(length + 1)):
                loss, _ = ctc_loss(lp[:length, b:b + 1], [list(labels)], [length],
                                   reduction="sum", zero_infinity=True)
                if loss > 0:
                    scores[labels] = -loss
            ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:3]
            assert [tuple(p) for p, _ in found[b]] == [p for p, _ in ranked]
            np.testing.assert_allclose([s for _, s in found[b]], [s for _, s in ranked],
                                       rtol=1e-10)


def test_decoding_bad_inputs():
    lp = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"input_lengths\[1\] must lie in \[0, 4\], got 5"):
        greedy_decode(lp, input_lengths=[1, 5])
    with pytest.raises(ValueError, match=r"blank must lie in \[0, 3\)"):
        prefix_beam_search(lp, blank=3)
    with pytest.raises(ValueError, match="beam_width must be a positive int, got 0"):
        prefix_beam_search(lp, beam_width=0)


def test_long_sequences_float32_as_accurate_as_torch(rng):
    # The float path runs a polynomial exp and log. With losses of several hundred nats the
    # gradient's exponent exp(log alpha beta + loss - y) loses ~1e-4 to float32 rounding in torch
    # as well: compare both against the float64 result (itself checked against torch above).
    z = (rng.standard_normal((200, 4, 30)) * 3).astype(np.float32)
    tg = rng.integers(1, 30, size=(4, 40))
    il, tl = np.array([200, 180, 150, 120]), np.array([40, 35, 40, 20])
    loss, grad = ctc_loss(log_softmax(z), tg, il, tl, reduction="none")
    exact_loss, exact_grad = ctc_loss(log_softmax(z.astype(np.float64)), tg, il, tl,
                                      reduction="none")
    torch_loss, torch_grad = _torch_ctc(z, tg, il, tl, 0, "none", False)
    assert exact_loss.min() > 300
    for ours, theirs, exact in ((loss, torch_loss, exact_loss), (grad, torch_grad, exact_grad)):
        ours_err, torch_err = np.abs(ours - exact).max(), np.abs(theirs - exact).max()
        assert ours_err <= 2 * torch_err + 1e-6, (ours_err, torch_err)


def test_beam_width_1_is_not_greedy():
    # docs/recognition.md's case: greedy follows the best frame labels (A, B, blank -> "AB"),
    # width 1 keeps the best prefix summed over its alignments ("A"), here the more probable.
    p = np.array([[0.27, 0.53, 0.20], [0.37, 0.24, 0.39], [0.49, 0.28, 0.23]])[:, None, :]
    lp = np.log(p)
    assert greedy_decode(lp)[0] == [1, 2]
    (labels, log_prob), = prefix_beam_search(lp, beam_width=1)[0]
    assert list(labels) == [1]
    probs = {tuple(lab): np.exp(-ctc_loss(lp, [lab], reduction="none")[0][0])
             for lab in ([1, 2], [1])}
    assert np.isclose(probs[(1, 2)], 0.238087) and np.isclose(probs[(1,)], 0.271901)
    # the reported log_prob sums only the alignments the width-1 beam kept
    assert np.exp(log_prob) <= probs[(1,)] + 1e-12
