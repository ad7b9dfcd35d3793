"""rnncore.attention: float64 finite differences, torch 2.13 autograd implementations written
here as the independent oracle (one-shot and multi-step over a shared memory), exact zeros at
padding, and the errors."""
import numpy as np
import pytest

import rnncore
from rnncore.attention import Attention, AttentionMemory

f64 = np.float64
SCORES = ("dot", "general", "additive")


def make(score, Q=5, K=5, dtype=f64, seed=0, **kw):
    return Attention(Q, K, score=score, dtype=dtype, seed=seed, **kw)


def lengths_mask(lengths, S):
    return np.arange(S)[:, None] < np.asarray(lengths)[None, :]  # (S, B)


# ---- finite differences -------------------------------------------------------------------------
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("which", ["none", "lengths", "mask"])
def test_gradients_one_step(score, which, rng):
    S, B, K = 6, 3, 5
    Q = K if score == "dot" else 4
    attn = make(score, Q, K, attention_size=7 if score == "additive" else None)
    kwargs = {}
    if which == "lengths":
        kwargs["lengths"] = np.array([6, 2, 4])
    elif which == "mask":
        kwargs["mask"] = rng.random((S, B)) < 0.6
        kwargs["mask"][0] = True
    rnncore.check_gradients(attn, (rng.standard_normal((B, Q)), rng.standard_normal((S, B, K))),
                            forward_kwargs=kwargs)


def _unrolled(attn, queries, keys, lengths):
    """sum over steps of (context_t . Wc_t + weights_t . Ww_t) through one shared memory."""
    class Unrolled(rnncore.Model):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, queries, keys):
            self._memory = self.attn.memory(keys, lengths=lengths)
            outs = [self.attn(q, self._memory) for q in queries]
            return (np.stack([c for c, _ in outs]), np.stack([w for _, w in outs]))

        def backward(self, dcontexts, dweights):
            dq = [None] * len(dcontexts)
            for t in range(len(dcontexts) - 1, -1, -1):
                dq[t], none = self.attn.backward(dcontexts[t], dweights[t])
                assert none is None
            return np.stack(dq), self.attn.backward_memory(self._memory)
    return Unrolled()


@pytest.mark.parametrize("score", SCORES)
def test_gradients_through_a_shared_memory(score, rng):
    T, S, B, K = 3, 5, 2, 4
    Q = K if score == "dot" else 3
    model = _unrolled(make(score, Q, K), None, None, np.array([5, 3]))
    rnncore.check_gradients(model, (rng.standard_normal((T, B, Q)),
                                    rng.standard_normal((S, B, K))))


# ---- torch autograd as the oracle ---------------------------------------------------------------
def torch_attention(torch, score, Q, K, A, bias):
    """The three scores written with torch ops, parameters named as rnncore names them."""
    nn = torch.nn

    class TorchAttention(nn.Module):
        def __init__(self):
            super().__init__()
            if score == "general":
                self.weight = nn.Parameter(torch.zeros(Q, K, dtype=torch.float64))
            elif score == "additive":
                self.query_proj = nn.Linear(Q, A, bias=False, dtype=torch.float64)
                self.key_proj = nn.Linear(K, A, bias=bias, dtype=torch.float64)
                self.energy = nn.Linear(A, 1, bias=False, dtype=torch.float64)

        def forward(self, q, keys, mask):  # q (B, Q), keys (S, B, K), mask (S, B) bool
            if score == "dot":
                e = torch.einsum("bk,sbk->bs", q, keys)
            elif score == "general":
                e = torch.einsum("bq,qk,sbk->bs", q, self.weight, keys)
            else:
                e = self.energy(torch.tanh(self.query_proj(q)[None] + self.key_proj(keys)))
                e = e[..., 0].T
            e = e.masked_fill(~mask.T, float("-inf"))
            w = torch.softmax(e, dim=1)
            return torch.einsum("bs,sbk->bk", w, keys), w
    return TorchAttention()


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_over_steps(score, bias, rng):
    torch = pytest.importorskip("torch", reason="PyTorch 2.13 is not installed")
    if score != "additive" and not bias:
        pytest.skip("bias only exists for additive scores")
    T, S, B, K, A = 4, 7, 3, 6, 5
    Q = K if score == "dot" else 4
    attn = make(score, Q, K, attention_size=A, bias=bias, seed=3)
    ref = torch_attention(torch, score, Q, K, A, bias)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in attn.state_dict().items()})
    lengths = np.array([7, 1, 4])
    queries = rng.standard_normal((T, B, Q))
    keys = rng.standard_normal((S, B, K))
    dcs, dws = rng.standard_normal((T, B, K)), rng.standard_normal((T, B, S))

    memory = attn.memory(keys, lengths=lengths)
    outs = [attn(q, memory) for q in queries]
    dq = [attn.backward(dcs[t], dws[t])[0] for t in reversed(range(T))][::-1]
    dkeys = attn.backward_memory(memory)

    qt = torch.tensor(queries, requires_grad=True)
    kt = torch.tensor(keys, requires_grad=True)
    mask = torch.from_numpy(lengths_mask(lengths, S))
    loss = 0
    for t in range(T):
        c, w = ref(qt[t], kt, mask)
        np.testing.assert_allclose(outs[t][0], c.detach().numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(outs[t][1], w.detach().numpy(), rtol=1e-12, atol=1e-13)
        loss = loss + (c * torch.from_numpy(dcs[t])).sum() + (w * torch.from_numpy(dws[t])).sum()
    loss.backward()
    np.testing.assert_allclose(np.stack(dq), qt.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(dkeys, kt.grad.numpy(), rtol=1e-11, atol=1e-12)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(attn.grads[name], p.grad.numpy(), rtol=1e-11, atol=1e-12,
                                   err_msg=name)
    assert attn.pending_steps == 0


@pytest.mark.parametrize("score", SCORES)
def test_float32_close_to_float64(score, rng):
    a64 = make(score, 8, 8, seed=5)
    a32 = make(score, 8, 8, dtype=np.float32, seed=5)
    a32.load_state_dict(a64.state_dict())
    q, k = rng.standard_normal((4, 8)), rng.standard_normal((9, 4, 8))
    dc = rng.standard_normal((4, 8))
    lengths = np.array([9, 3, 1, 6])
    c64, w64 = a64(q, k, lengths=lengths)
    c32, w32 = a32(q, k, lengths=lengths)
    assert c32.dtype == np.float32 and w32.dtype == np.float32
    np.testing.assert_allclose(c32, c64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w32, w64, rtol=1e-4, atol=1e-6)
    dq64, dk64 = a64.backward(dc)
    dq32, dk32 = a32.backward(dc)
    assert dq32.dtype == np.float32 and dk32.dtype == np.float32
    np.testing.assert_allclose(dq32, dq64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk32, dk64, rtol=1e-4, atol=1e-4)


# ---- masks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("score", SCORES)
def test_padding_gets_exactly_zero_weight_and_gradient(score, rng):
    S, B, K = 6, 3, 4
    attn = make(score, K, K)
    keys = rng.standard_normal((S, B, K))
    mask = np.ones((S, B), dtype=bool)
    mask[4:, 0] = False
    mask[[0, 2], 1] = False
    mask[5, 2] = False
    keys[~mask] = np.nan  # padding may hold anything
    q = rng.standard_normal((B, K))
    c, w = attn(q, keys, mask=mask.astype(np.int8))
    assert np.all(w.T[~mask] == 0.0) and np.all(np.isfinite(c))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-14)
    dq, dk = attn.backward(rng.standard_normal((B, K)), rng.standard_normal((B, S)))
    assert np.all(dk[~mask] == 0.0) and np.all(np.isfinite(dk)) and np.all(np.isfinite(dq))
    assert all(np.all(np.isfinite(g)) for g in attn.grads.values())
    # the same as attending over the counted positions alone, row by row
    keys0 = np.where(mask[..., None], keys, 0.0)
    for b in range(B):
        keep = mask[:, b]
        c_b, w_b = attn(q[b:b + 1], keys0[keep, b:b + 1])
        attn.clear_pending()
        np.testing.assert_allclose(c_b[0], c[b], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(w_b[0], w[b, keep], rtol=1e-13, atol=1e-14)


def test_lengths_equal_mask(rng):
    attn = make("general", 3, 4)
    q, k = rng.standard_normal((3, 3)), rng.standard_normal((5, 3, 4))
    lengths = np.array([2, 5, 1])
    c1, w1 = attn(q, k, lengths=lengths)
    c2, w2 = attn(q, k, mask=lengths_mask(lengths, 5))
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(w1, w2)


def test_memory_select_equals_repeated_keys(rng):
    attn = make("additive", 3, 4, attention_size=6)
    attn.eval()
    q, k = rng.standard_normal((6, 3)), rng.standard_normal((5, 3, 4))
    lengths = np.array([2, 5, 1])
    rows = np.repeat(np.arange(3), 2)
    sub = attn.memory(k, lengths=lengths).select(rows)
    assert isinstance(sub, AttentionMemory) and sub.batch_size == 6
    c1, w1 = attn(q, sub)
    c2, w2 = attn(q, k[:, rows], lengths=lengths[rows])
    np.testing.assert_allclose(c1, c2, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(w1, w2, rtol=1e-14, atol=1e-15)
    assert attn.pending_steps == 0


# ---- modes, state, errors -----------------------------------------------------------------------
def test_eval_and_no_grad_keep_nothing(rng):
    attn = make("dot", 4, 4)
    q, k = rng.standard_normal((2, 4)), rng.standard_normal((3, 2, 4))
    with rnncore.no_grad():
        attn(q, k)
    assert attn.pending_steps == 0
    attn.eval()
    attn(q, k)
    assert attn.pending_steps == 0
    with pytest.raises(RuntimeError, match="preceding training-mode forward"):
        attn.backward(np.zeros((2, 4)))
    attn.train()
    attn(q, k)
    attn(q, k)
    assert attn.pending_steps == 2
    attn.backward(np.zeros((2, 4)))
    attn.backward(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="preceding training-mode forward"):
        attn.backward(np.zeros((2, 4)))


def test_backward_memory_rules(rng):
    attn = make("additive", 4, 4)
    memory = attn.memory(rng.standard_normal((3, 2, 4)))
    attn(rng.standard_normal((2, 4)), memory)
    with pytest.raises(RuntimeError, match="1 training steps"):
        attn.backward_memory(memory)
    attn.backward(np.ones((2, 4)))
    dk = attn.backward_memory(memory)
    assert dk.shape == (3, 2, 4)
    with pytest.raises(RuntimeError, match="training mode"):
        attn.backward_memory(memory)
    with pytest.raises(TypeError, match="AttentionMemory"):
        make("additive", 4, 4).backward_memory(memory)


def test_state_dict_names_and_roundtrip():
    assert list(make("dot", 3, 3).params) == []
    assert {k: v.shape for k, v in make("general", 3, 5).params.items()} == {"weight": (3, 5)}
    a = make("additive", 3, 5, attention_size=7)
    assert {k: v.shape for k, v in a.params.items()} == {
        "query_proj.weight": (7, 3), "key_proj.weight": (7, 5), "key_proj.bias": (7,),
        "energy.weight": (1, 7)}
    b = make("additive", 3, 5, attention_size=7, seed=9)
    b.load_state_dict(a.state_dict())
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert set(a.grads) == set(a.params)


def test_errors(rng):
    with pytest.raises(ValueError, match="score must be one of"):
        Attention(3, 3, score="cosine")
    with pytest.raises(ValueError, match="query_size == key_size.*query_size=3 and key_size=4"):
        Attention(3, 4, score="dot")
    with pytest.raises(ValueError, match="key_size must be a positive integer, got 0"):
        Attention(3, 0)
    attn = make("general", 3, 4)
    k = rng.standard_normal((5, 2, 4))
    with pytest.raises(ValueError, match=r"keys must have shape \(S, B, 4\).*got \(5, 2, 3\)"):
        attn(np.zeros((2, 3)), np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match=r"query must have shape .* \(2, 3\), got \(2, 4\)"):
        attn(np.zeros((2, 4)), k)
    with pytest.raises(ValueError, match="row 1 has none"):
        attn(np.zeros((2, 3)), k, lengths=np.array([3, 0]))
    with pytest.raises(ValueError, match="row 0 has none"):
        attn(np.zeros((2, 3)), k, mask=np.zeros((5, 2), dtype=bool))
    with pytest.raises(ValueError, match="S = 0"):
        attn(np.zeros((2, 3)), np.zeros((0, 2, 4)))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\].*lengths\[0\] = 6"):
        attn(np.zeros((2, 3)), k, lengths=np.array([6, 1]))
    with pytest.raises(ValueError, match=r"mask must have shape \(S, B\) = \(5, 2\)"):
        attn(np.zeros((2, 3)), k, mask=np.ones((2, 5), dtype=bool))
    with pytest.raises(ValueError, match="either mask or lengths"):
        attn(np.zeros((2, 3)), k, mask=np.ones((5, 2)), lengths=np.array([1, 1]))
    with pytest.raises(TypeError, match="keys must be a numeric array"):
        attn(np.zeros((2, 3)), np.full((5, 2, 4), "a"))
    attn(np.zeros((2, 3)), k)
    with pytest.raises(ValueError, match=r"dcontext must have shape .* \(2, 4\), got \(2, 3\)"):
        attn.backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dweights must have shape .* \(2, 5\), got \(5, 2\)"):
        attn.backward(np.zeros((2, 4)), np.zeros((5, 2)))
    assert attn.pending_steps == 1  # a bad argument does not consume the step
    with pytest.raises(ValueError, match="another Attention"):
        make("general", 3, 4)(np.zeros((2, 3)), attn.memory(k))


def test_empty_batch():
    attn = make("general", 3, 4)
    c, w = attn(np.zeros((0, 3)), np.zeros((5, 0, 4)))
    assert c.shape == (0, 4) and w.shape == (0, 5)
    dq, dk = attn.backward(np.zeros((0, 4)))
    assert dq.shape == (0, 3) and dk.shape == (5, 0, 4)
    assert not attn.grads["weight"].any()
