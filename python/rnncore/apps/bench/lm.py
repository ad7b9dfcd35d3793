"""`rnncore bench --lm`: the character language model against the same model in PyTorch, the
same data and initial weights, updates alternating in blocks; then the validation loss after
the same number of updates, and where rnncore's update spends its time."""
from __future__ import annotations

import time

import numpy as np

from rnncore.apps.bench.common import both_threads
from rnncore.apps.bench.configs import LM, LM_TARGETS
from rnncore.models.lm import LanguageModel, Vocabulary, default_corpus
from rnncore.testing.torch_twin import torch_twin
from rnncore.train.losses import cross_entropy
from rnncore.train.optim import Adam, clip_grad_norm
from rnncore.train.tbptt import batchify, evaluate, truncated_bptt


def _torch_lm(torch, model, cell):
    """The same network in torch.nn, with rnncore's initial weights copied in."""
    V, E, H, L = (model.config[k] for k in ("vocab_size", "embed", "hidden", "layers"))
    rnn_cls, options = torch_twin(cell)
    net = torch.nn.ModuleDict({"embed": torch.nn.Embedding(V, E),
                               "rnn": rnn_cls(E, H, L, **options),
                               "head": torch.nn.Linear(H, V)})
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(model.params[name]))
    return net


def _torch_step(torch, net, opt, x, y, state, clip):
    """One TBPTT update of the torch model; returns (loss, detached state)."""
    opt.zero_grad()
    out, state = net["rnn"](net["embed"](x), state)
    logits = net["head"](out)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return float(loss.detach()), state


def _profile_rnncore_update(model, opt, x, y, clip, repeats=20):
    """Seconds per update in each part: the recurrent core, the embedding, the read-out with
    softmax cross-entropy, clipping + Adam (medians over `repeats` updates)."""
    parts = {"core (LSTM/GRU fwd+bwd)": [], "embedding fwd+bwd": [],
             "read-out + softmax CE fwd+bwd": [], "clip + Adam": []}
    keys = list(parts)
    for _ in range(repeats):
        t = [time.perf_counter()]
        e = model.embed(x); t.append(time.perf_counter())
        h, _ = model.rnn(e); t.append(time.perf_counter())
        logits = model.head(h)
        loss, d = cross_entropy(logits, y)
        model.zero_grad()
        dh = model.head.backward(d); t.append(time.perf_counter())
        de, _ = model.rnn.backward(dh); t.append(time.perf_counter())
        model.embed.backward(de); t.append(time.perf_counter())
        clip_grad_norm(model, clip)
        opt.step(); t.append(time.perf_counter())
        parts[keys[1]].append((t[1] - t[0]) + (t[5] - t[4]))
        parts[keys[0]].append((t[2] - t[1]) + (t[4] - t[3]))
        parts[keys[2]].append(t[3] - t[2])
        parts[keys[3]].append(t[6] - t[5])
    return {k: float(np.median(v)) for k, v in parts.items()}


def run_lm(args):
    """rnncore's language model against torch's, same data, same initial weights, 2 threads,
    updates alternating in blocks; then validation loss after the same number of updates."""
    import torch  # optional: torch (rnncore[torch]), the other side of the comparison
    threads = max(args.threads)
    both_threads(torch, threads)
    text, source = default_corpus(args.lm_chars)
    split = int(len(text) * 0.95)
    vocab = Vocabulary.from_text(text[:split], "char")
    train = batchify(vocab.encode(text[:split]), LM["batch"])
    val = batchify(vocab.encode(text[split:]), LM["batch"])[:1025]
    k = LM["bptt"]
    steps, block = min(args.lm_steps, (len(train) - 1) // k), 10
    print(f"language model: {source}; vocabulary {len(vocab)}; embedding {LM['embed']}, "
          f"{LM['layers']} x {LM['hidden']}, batch {LM['batch']}, chunk {k}, Adam lr {LM['lr']}, "
          f"clip {LM['clip']}; {steps} updates each, alternating blocks of {block}; "
          f"{threads} threads")
    rows = []
    for cell in args.lm_cells:
        model = LanguageModel(len(vocab), LM["embed"], LM["hidden"], LM["layers"], cell, seed=0)
        net = _torch_lm(torch, model, cell)
        ropt = Adam(model, lr=LM["lr"])
        times = _alternate(torch, model, ropt, net, train, steps, block)
        r_val, _ = evaluate(model, cross_entropy, val[:-1], val[1:])
        t_val = _torch_validation(torch, net, val)
        profile = _profile_rnncore_update(model, ropt, train[:k], train[1:k + 1], LM["clip"])
        tr, tt = (float(np.median(times[n][2:])) for n in ("rnncore", "torch"))
        row = dict(cell=cell, steps=steps, rnncore_s=tr, torch_s=tt, ratio=tr / tt,
                   target=LM_TARGETS.get(cell), rnncore_chars=LM["batch"] * k / tr,
                   torch_chars=LM["batch"] * k / tt, rnncore_val=r_val, torch_val=t_val,
                   profile=profile)
        rows.append(row)
        _print_row(row)
    return rows


def _alternate(torch, model, ropt, net, train, steps, block):
    """`steps` TBPTT updates of each model, alternating in blocks of `block` updates (a short
    pause before each); returns {library: [seconds per update]}."""
    k = LM["bptt"]
    topt = torch.optim.Adam(net.parameters(), lr=LM["lr"])
    updates = truncated_bptt(model, cross_entropy, train[:-1], train[1:], k1=k)
    tx = torch.from_numpy(train)
    tstate, tpos = None, 0
    times = {"rnncore": [], "torch": []}
    done = 0
    while done < steps:
        n = min(block, steps - done)
        time.sleep(0.03)
        for _ in range(n):
            t0 = time.perf_counter()
            next(updates)
            clip_grad_norm(model, LM["clip"])
            ropt.step()
            times["rnncore"].append(time.perf_counter() - t0)
        time.sleep(0.03)
        for _ in range(n):
            t0 = time.perf_counter()
            _, tstate = _torch_step(torch, net, topt, tx[tpos:tpos + k],
                                    tx[tpos + 1:tpos + k + 1], tstate, LM["clip"])
            times["torch"].append(time.perf_counter() - t0)
            tpos += k
        done += n
    return times


def _torch_validation(torch, net, val):
    with torch.no_grad():
        tv = torch.from_numpy(val)
        out, _ = net["rnn"](net["embed"](tv[:-1]))
        logits = net["head"](out)
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       tv[1:].reshape(-1)))


def _print_row(row):
    tr, tt, r_val, t_val, profile = (row[k] for k in ("rnncore_s", "torch_s", "rnncore_val",
                                                      "torch_val", "profile"))
    met = "" if row["target"] is None else (" (target <= %.1f: %s)" % (
        row["target"], "met" if row["ratio"] <= row["target"] else "missed"))
    print(f"  {row['cell']}: {1e3 * tr:.1f} ms vs torch {1e3 * tt:.1f} ms per update, ratio "
          f"{row['ratio']:.2f}{met}; {row['rnncore_chars']:,.0f} vs {row['torch_chars']:,.0f} "
          f"chars/s; validation loss after {row['steps']} updates {r_val:.4f} vs {t_val:.4f} "
          f"({100 * (r_val / t_val - 1):+.1f}%)")
    total = sum(profile.values())
    print("    rnncore update profile: " + ", ".join(
        f"{name} {1e3 * v:.1f} ms ({100 * v / total:.0f}%)" for name, v in profile.items()))
