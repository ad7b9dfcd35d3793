"""Composition: a Model holds named child modules and shows their parameters as one flat set.

    class CharLM(rnncore.Model):
        def __init__(self, vocab, hidden):
            super().__init__()
            self.embed = rnncore.Embedding(vocab, 32)    # a child named "embed"
            self.rnn = rnncore.LSTM(32, hidden)          # "rnn"
            self.head = rnncore.Linear(hidden, vocab)    # "head"

    model.params  ->  "embed.weight", "rnn.weight_ih_l0", ..., "head.bias": the children's own
    live arrays, so an optimiser built on the model updates the children in place.

A Model writes its own forward and backward (explicit, like every rnncore module); Sequential
chains modules that map one array to one array.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from rnncore._typing import ArrayLike
from rnncore.nn.module import Module, check_keys, parameters_changed, to_numpy


def _check_child_name(name):
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a child module's name must be a non-empty string without '.', "
                         f"got {name!r}")
    return name


class Model(Module):
    """Base class of composed models: assigning a Module to an attribute registers it as a child.

    params / grads: flat OrderedDicts "child.name" -> the child's live arrays (nested models
    give "outer.inner.name"); train() / eval() / zero_grad() reach every child; state_dict() and
    load_state_dict() use the flat names (load is all-or-nothing). A module registered under two
    names (weight tying) appears under both names; optimisers and num_parameters() count each
    array once. Subclasses call super().__init__() first and define forward (and backward)."""

    def __init__(self) -> None:
        # Module.__init__ is not called: params / grads are views of the children here
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_lock", threading.RLock())  # Module's (pickling drops it)

    # ---- children ---------------------------------------------------------------------------
    def __setattr__(self, name, value):
        modules = self.__dict__.get("_modules")
        if isinstance(value, Module):
            if modules is None:
                raise AttributeError(
                    f"cannot assign module {name!r} before Model.__init__() has run: call "
                    f"super().__init__() first in {type(self).__name__}.__init__")
            self.__dict__.pop(name, None)
            modules[_check_child_name(name)] = value
            return
        if modules is not None and name in modules:
            del modules[name]
        object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails: the children
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            return modules[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            del modules[name]
        else:
            object.__delattr__(self, name)

    def add_module(self, name: str, module: Module) -> Module:
        """Registers `module` under `name` (for names made in a loop); same as setattr."""
        if not isinstance(module, Module):
            raise TypeError(f"module must be an rnncore Module, got {type(module).__name__}")
        setattr(self, _check_child_name(name), module)
        return module

    def named_children(self) -> list[tuple[str, Module]]:
        """[(name, module)] in registration order."""
        return list(self._modules.items())

    # ---- the flat parameter set -------------------------------------------------------------
    def _flat(self, attr):
        out = OrderedDict()
        for child_name, child in self._modules.items():
            for k, v in getattr(child, attr).items():
                out[f"{child_name}.{k}"] = v
        return out

    @property
    def params(self):
        """OrderedDict "child.name" -> live parameter array (rebuilt from the children on each
        access, so it always shows the current children)."""
        return self._flat("params")

    @property
    def grads(self):
        """OrderedDict "child.name" -> live gradient array, same keys and shapes as params."""
        return self._flat("grads")

    def num_parameters(self):
        """Number of scalar parameters, each array counted once (tied modules share arrays)."""
        unique = {id(p): p.size for p in self.params.values()}
        return int(sum(unique.values()))

    # ---- modes and gradients ----------------------------------------------------------------
    def train(self, mode: bool = True) -> Model:
        object.__setattr__(self, "training", bool(mode))
        if not mode:
            self._drop_tape()  # a model with a backward of its own keeps a Tape as any module
        for child in self._modules.values():
            child.train(mode)
        return self

    def zero_grad(self) -> None:
        for child in self._modules.values():
            child.zero_grad()

    # ---- state dicts ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], strict: bool = True) -> Model:
        """Copies values into the children's live arrays, by flat name.

        strict: missing or unexpected keys raise KeyError listing them; a wrong shape raises
        ValueError naming the key and both shapes. Nothing is written unless every check passes
        (a child that still refuses its part has the children loaded before it rolled back)."""
        params = self.params
        if strict:
            check_keys(f"load_state_dict({type(self).__name__})", params, list(state_dict))
        per_child = OrderedDict((name, OrderedDict()) for name in self._modules)
        for k, v in state_dict.items():
            if k not in params:
                continue
            a = to_numpy(v)
            if a.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {k} must be numeric, got dtype {a.dtype}")
            if tuple(a.shape) != params[k].shape:
                raise ValueError(f"load_state_dict: {k} has shape {tuple(a.shape)}, "
                                 f"expected {params[k].shape}")
            child, rest = k.split(".", 1)
            per_child[child][rest] = a
        backup = self.state_dict()
        try:
            for name, child in self._modules.items():
                if per_child[name]:
                    child.load_state_dict(per_child[name], strict=False)
        except BaseException:
            for k, v in backup.items():
                params[k][...] = v
            parameters_changed()
            raise
        return self

    # ---- forward / backward -----------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define backward()")

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}()"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


class Sequential(Model):
    """Modules applied one after the other: forward y = m_n(...m_1(x)), backward in reverse.

    Children are named "0", "1", ...; each must map one array to one array (e.g. Linear,
    Dropout, LayerNorm, a Model of your own; an Embedding only as the first, since it returns no
    input gradient). rnncore.LSTM and friends return (y, state) and belong in a Model of your
    own, which decides what to do with the state."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x: ArrayLike) -> Any:
        for i, m in enumerate(self._modules.values()):
            x = m(x)
            if isinstance(x, tuple):
                raise TypeError(
                    f"Sequential: module {i} ({type(m).__name__}) returned a tuple; Sequential "
                    "chains modules that map one array to one array (put recurrent modules, "
                    "which return (y, state), in a Model of your own)")
        return x

    def backward(self, dy: ArrayLike) -> Any:
        modules = list(self._modules.values())
        for i in range(len(modules) - 1, -1, -1):
            dy = modules[i].backward(dy)
            if dy is None and i > 0:
                raise TypeError(
                    f"Sequential.backward: module {i} ({type(modules[i]).__name__}) returns no "
                    "input gradient, so it can only be the first module")
        return dy


def named_generators(module, prefix=""):
    """[(dotted name, numpy Generator)] of a module and its children: the random state that
    its forward passes draw from (dropout masks, dropout seeds). Checkpoints save it; the
    gradient checker replays it so that every evaluation sees the same masks."""
    out = []
    for name, value in vars(module).items():
        if isinstance(value, np.random.Generator):
            out.append((prefix + name, value))
    if isinstance(module, Model):
        for child_name, child in module._modules.items():
            out.extend(named_generators(child, f"{prefix}{child_name}."))
    return out
