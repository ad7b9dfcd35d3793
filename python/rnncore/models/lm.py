"""The language model of `rnncore train lm`: corpus, vocabulary, the model, sampling and
loading a trained checkpoint (the program itself is rnncore.apps.lm).

Embedding -> stacked LSTM (or any registry cell) -> Linear -> softmax over the next token.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np

from rnncore.nn.layers import Dropout, Embedding, Linear
from rnncore.nn.model import Model
from rnncore.nn.module import no_grad
from rnncore.nn.registry import CELLS, make_module
from rnncore.train import checkpoint

DEFAULT_CELL = "lstm"  # the language model's default cell (the lecture's)
UNKNOWN = "\ufffd"  # the token every unseen character (or rare word) maps to


_WORDS = re.compile(r"\n|[ \t]+|\w+|[^\w\s]")  # words, punctuation, runs of blanks, newlines


def default_corpus(max_chars=2_000_000):
    """(text, description): the standard library's top-level .py files of this Python, sorted by
    name, joined by blank lines until max_chars characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .py files in the standard library folder {stdlib}: pass "
                                "--corpus FILE")
    parts, n, used = [], 0, 0
    for path in files:
        if n >= max_chars:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text[:max_chars - n])
        n += len(parts[-1]) + 2
        used += 1
    text = "\n\n".join(parts)[:max_chars]
    return text, (f"{used} source files of Python {sys.version.split()[0]}'s standard library "
                  f"({files[0].name} .. {files[used - 1].name}, {stdlib})")


class Vocabulary:
    """Tokens <-> ids. level "char": every character of the training text; "word": the
    max_size - 1 most frequent tokens of _WORDS (words, punctuation, blanks, newlines), so text
    decodes back by concatenation. Id 0 is UNKNOWN."""

    def __init__(self, tokens, level):
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.level = level
        self.itos = [UNKNOWN] + [t for t in tokens if t != UNKNOWN]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text, level="char", max_size=None):
        counts = Counter(cls.tokenize(text, level))
        ranked = sorted(counts, key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max(1, max_size - 1)]
        return cls(sorted(ranked) if level == "char" else ranked, level)

    @staticmethod
    def tokenize(text, level):
        return list(text) if level == "char" else _WORDS.findall(text)

    def __len__(self):
        return len(self.itos)

    def encode(self, text):
        return np.array([self.stoi.get(t, 0) for t in self.tokenize(text, self.level)],
                        dtype=np.int64)

    def decode(self, ids):
        return "".join(self.itos[int(i)] for i in ids)


class LanguageModel(Model):
    """Embedding -> recurrent stack -> dropout -> Linear: logits of the next token.

    forward(tokens (T, B) int, state) -> (logits (T, B, V), state); backward(dlogits) runs BPTT
    through that forward (the state passed in gets no gradient: truncated BPTT)."""

    def __init__(self, vocab_size, embed=64, hidden=256, layers=2, cell=DEFAULT_CELL, dropout=0.0,
                 seed=0, dtype=np.float32):
        super().__init__()
        self.config = dict(vocab_size=int(vocab_size), embed=int(embed), hidden=int(hidden),
                           layers=int(layers), cell=cell, dropout=float(dropout),
                           dtype=np.dtype(dtype).name)
        self.embed = Embedding(vocab_size, embed, dtype=dtype, seed=seed)
        self.rnn = make_module(cell, embed, hidden, num_layers=layers, dropout=dropout,
                               dtype=dtype, seed=seed + 1)
        self.drop = Dropout(dropout, dtype=dtype, seed=seed + 2)
        self.head = Linear(hidden, vocab_size, dtype=dtype, seed=seed + 3)

    def forward(self, tokens, state=None):
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(self.drop(y)), state

    def backward(self, dlogits):
        dy = self.drop.backward(self.head.backward(dlogits))
        dx, _ = self.rnn.backward(dy)
        self.embed.backward(dx)


def state_arrays(state):
    """A carried state (h, or (h, c)) -> dict of arrays (for a checkpoint), and back."""
    if state is None:
        return {}
    return {"h": state[0], "c": state[1]} if isinstance(state, tuple) else {"h": state}


def state_from_arrays(arrays, prefix=""):
    if prefix + "h" not in arrays:
        return None
    h = arrays[prefix + "h"]
    return (h, arrays[prefix + "c"]) if prefix + "c" in arrays else h


def generate(model, vocab, prompt="", length=400, temperature=0.8, top_k=None, rng=None):
    """Text continuing `prompt`: each next token drawn from softmax(logits / temperature),
    restricted to the top_k most likely when given (temperature 0: always the most likely)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be a positive int or None, got {top_k}")
    rng = np.random.default_rng() if rng is None else rng
    ids = vocab.encode(prompt) if prompt else np.array([vocab.stoi.get("\n", 0)])
    out = []
    with no_grad():
        logits, state = model.forward(ids[:, None], None)
        last = logits[-1, 0].astype(np.float64)
        for _ in range(length):
            if temperature == 0:
                token = int(np.argmax(last))
            else:
                z = last / temperature
                if top_k is not None and top_k < z.size:
                    cut = np.partition(z, -top_k)[-top_k]
                    z = np.where(z >= cut, z, -np.inf)
                p = np.exp(z - z.max())
                p /= p.sum()
                token = int(rng.choice(p.size, p=p))
            out.append(token)
            logits, state = model.forward(np.array([[token]]), state)
            last = logits[-1, 0].astype(np.float64)
    return vocab.decode(out)


def _positive(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_CONFIG_FIELDS = {  # config field of a language-model checkpoint -> (check, what it must be)
    "vocab": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v),
              "a list of strings"),
    "level": (lambda v: v in ("char", "word"), "'char' or 'word'"),
    "vocab_size": (_positive, "a positive integer"),
    "embed": (_positive, "a positive integer"),
    "hidden": (_positive, "a positive integer"),
    "layers": (_positive, "a positive integer"),
    "cell": (lambda v: isinstance(v, str) and v in CELLS, "a cell of the registry"),
    "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                and 0 <= v < 1, "a number in [0, 1)"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
}
_OPTIONAL = {"dtype"}  # absent in older files: float32


def check_config(path, config):
    """CheckpointError unless `config` (a checkpoint's) is a language model's: every field of
    _CONFIG_FIELDS present and of its type, the vocabulary as long as vocab_size says."""
    if not isinstance(config, dict) or "vocab" not in config:
        raise checkpoint.CheckpointError(path, "not a language-model checkpoint (its config has "
                                               "no vocabulary)")
    for name, (ok, what) in _CONFIG_FIELDS.items():
        if name not in config:
            if name in _OPTIONAL:
                continue
            raise checkpoint.CheckpointError(path, f"not a language-model checkpoint (its config "
                                                   f"has no {name!r})")
        if not ok(config[name]):
            raise checkpoint.CheckpointError(path, f"config field {name!r} must be {what}, got "
                                                   f"{config[name]!r}"[:300])
    if 1 + sum(t != UNKNOWN for t in config["vocab"]) != config["vocab_size"]:
        raise checkpoint.CheckpointError(path, f"config field 'vocab_size' is "
                                               f"{config['vocab_size']}, its vocabulary has "
                                               f"{len(config['vocab'])} tokens")
    return config


def load_model(path):
    """(model, vocabulary) from a checkpoint of rnncore train lm."""
    ck = checkpoint.load(path)
    cfg = check_config(path, ck.config)
    model = LanguageModel(cfg["vocab_size"], cfg["embed"], cfg["hidden"], cfg["layers"],
                          cfg["cell"], cfg["dropout"], dtype=cfg.get("dtype", "float32"))
    checkpoint.restore(path, model)
    model.eval()
    return model, Vocabulary(cfg["vocab"], cfg["level"])
