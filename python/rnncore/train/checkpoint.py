"""Checkpoints without pickle: one safetensors file holding the tensors, with JSON beside them.

    rnncore.checkpoint.save("lm.safetensors", model, opt, sched, step=step, rng=rng,
                            config={"hidden": 256}, extra={"val_bpc": 1.9})
    ck = rnncore.checkpoint.restore("lm.safetensors", model, opt, sched, rng=rng)  # -> Checkpoint
    ck = rnncore.checkpoint.load("lm.safetensors")                   # read only (e.g. to sample)

The file (safetensors: an 8-byte header length, a JSON header, the raw tensor bytes):
  tensors   "model.<name>"             every model parameter, in its dtype
            "optim.<name>.<buffer>"    the optimiser's state ("optim.rnn.weight_ih_l0.exp_avg")
            "arrays.<name>"            save(arrays=...): other arrays (a carried TBPTT state)
  metadata  "format": "rnncore-checkpoint", "format_version": "1",
            "meta": JSON {step, config, extra, rng (numpy bit-generator state), module_rngs (the
                    modules' own generators: dropout), optimizer {type, hyperparameters, step,
                    params}, scheduler (its state dict)}
            "sha256": over "meta" and every tensor's name, dtype, shape and bytes
Non-finite floats in the JSON (a plateau schedule's initial best = inf) are written as
{"__float__": "inf"}, so the JSON stays standard.

Writes are atomic: a temporary file in the same directory, flushed and fsync'ed, then
os.replace, then the directory fsync'ed: a crash leaves the old checkpoint or the new one.
Reading checks everything before anything is changed: a truncated, corrupted (checksum), foreign
or mismatched file raises CheckpointError (a ValueError) naming the file and what is wrong, and
the model, optimiser, schedule and generators are left as they were.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnncore._interop import deferred_interrupts
from rnncore.nn import registry
from rnncore.nn.model import Model, named_generators
from rnncore.nn.module import key_differences, native

FORMAT = "rnncore-checkpoint"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: `path` and `problem` say which and why."""

    def __init__(self, path, problem):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Checkpoint:
    """What a checkpoint file holds (load() / restore() return it)."""
    path: str
    model: "OrderedDict[str, np.ndarray]"      # parameter name -> array (a model state dict)
    optimizer: dict | None = None              # in Optimizer.state_dict() form
    scheduler: dict | None = None              # in the schedule's state_dict() form
    step: int = 0
    rng_state: dict | None = None              # numpy bit-generator state of save(rng=...)
    module_rngs: dict = field(default_factory=dict)  # dotted name -> bit-generator state
    config: Any = None
    extra: Any = None
    arrays: dict = field(default_factory=dict)  # name -> array of save(arrays=...)
    modules: dict | None = None  # module_variants() of the saved model (None: an older file)

    def rng(self):
        """A new numpy Generator in the saved state (None if save() had no rng)."""
        if self.rng_state is None:
            return None
        return np.random.Generator(_bit_generator(self.path, self.rng_state))


def _safetensors():
    try:
        import safetensors.numpy  # optional: safetensors, imported where checkpoints are used
    except ImportError as e:  # a dependency of rnncore; reachable only in a broken install
        raise ImportError("rnncore checkpoints need the safetensors package: "
                          "pip install safetensors") from e
    return safetensors.numpy


def _bit_generator(path, state, where="rng"):
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise CheckpointError(path, f"unknown numpy bit generator {name!r} in the saved {where} "
                                    "state")
    bg = cls()
    try:
        bg.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(path, f"malformed {name} state in the saved {where} state: "
                                    f"{_message(e)}") from None
    return bg


# ---- JSON with non-finite floats, numpy scalars, and nothing that would not come back ----------
def _to_json(value, where):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):  # e.g. an MT19937 key; comes back as a list
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} must be JSON-serialisable: key {k!r} is not a string")
            out[k] = _to_json(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where} must be JSON-serialisable (dicts, lists, str, numbers, bool, None), "
                    f"got {type(value).__name__}")


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def _digest(meta_json, tensors):
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode("utf-8"))
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


# ---- writing ------------------------------------------------------------------------------------
# A temporary file is ".<name>.<pid>.<12 hex digits>.tmp" beside its target; before rnncore 0.x
# older versions wrote ".<name>.<12 hex digits>.tmp" (no pid).
_TMP = re.compile(r"\..+\.(?P<pid>[0-9]+)\.[0-9a-f]{12}\.tmp")
_OLD_TMP = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
_OLD_TMP_AGE = 600.0  # seconds: an unnamed writer's file this old was left by a killed save


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def remove_stale_temporaries(directory):
    """Removes the temporary files of saves that were killed (kill -9, power loss) from
    `directory`: only names of rnncore's own pattern, and only where the writing process has
    ended (or, for the older pattern without a pid, after _OLD_TMP_AGE seconds). Returns the
    removed paths."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _TMP.fullmatch(name)
        path = os.path.join(directory, name)
        if m is not None:
            pid = int(m["pid"])
            if pid == os.getpid() or _alive(pid):
                continue
        elif _OLD_TMP.fullmatch(name) is not None:
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime < _OLD_TMP_AGE:
                    continue
        else:
            continue
        with contextlib.suppress(OSError):
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


def _atomic_write(path, blob):
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                  f"{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # makes the rename durable (POSIX; not on Windows)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def module_variants(model, prefix=""):
    """{dotted name: {"class", "cell", "precision"}} of every recurrent module (sequence or
    single step) in model: the registry cell it runs (e.g. "gru_reset_before" for
    GRU(reset_after=False)) and its GEMM precision. The root module is named ""."""
    out = {}
    cell = getattr(model, "cell", None)
    if isinstance(cell, str):
        out[prefix.rstrip(".")] = {"class": type(model).__name__, "cell": cell,
                                   "precision": str(getattr(model, "precision", "float32"))}
    if isinstance(model, Model):
        for name, child in model._modules.items():
            out.update(module_variants(child, f"{prefix}{name}."))
    return out


def save(path, model, optimizer=None, scheduler=None, step=0, rng=None, config=None, extra=None,
         arrays=None):
    """Writes model parameters, optimiser and schedule state, the step, a numpy Generator's
    state, the modules' own generators, JSON-serialisable `config` / `extra`, and `arrays` (a
    dict name -> numpy array, e.g. the hidden state a TBPTT run carries) to one file, atomically.
    Returns the path.

    A Ctrl-C (SIGINT) during the save is held until the file is written: the save finishes,
    then KeyboardInterrupt is raised. Temporary files that killed saves left in the folder are
    removed (remove_stale_temporaries)."""
    with deferred_interrupts():
        return _save(path, model, optimizer, scheduler, step, rng, config, extra, arrays)


def _save(path, model, optimizer, scheduler, step, rng, config, extra, arrays):
    path = os.fspath(path)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng()), got "
                        f"{type(rng).__name__}")
    # native(): safetensors writes an array's raw bytes under a little-endian type, so an array
    # in another byte order (or misaligned) is converted first
    tensors = OrderedDict(("model." + k, native(np.asarray(v)))
                          for k, v in model.params.items())
    for name, a in (arrays or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"arrays: names must be non-empty strings, got {name!r}")
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise TypeError(f"arrays[{name!r}] must be a numeric array, got dtype {a.dtype}")
        tensors["arrays." + name] = native(a)
    meta = {"step": int(step), "config": _to_json(config, "config"),
            "extra": _to_json(extra, "extra"), "optimizer": None, "scheduler": None,
            "rng": None if rng is None else _to_json(rng.bit_generator.state, "rng"),
            "module_rngs": {name: _to_json(g.bit_generator.state, name)
                            for name, g in named_generators(model)},
            "modules": module_variants(model)}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for name, buffers in sd["state"].items():
            for b, a in buffers.items():
                tensors[f"optim.{name}.{b}"] = native(np.asarray(a))
        meta["optimizer"] = _to_json({"type": sd["type"], "hyperparameters": sd["hyperparameters"],
                                      "step": sd["step"], "params": list(sd["state"])}, "optimizer")
    if scheduler is not None:
        meta["scheduler"] = _to_json(scheduler.state_dict(), "scheduler")
    meta_json = json.dumps(meta, sort_keys=True, allow_nan=False)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta_json,
                "sha256": _digest(meta_json, tensors)}
    _atomic_write(path, _safetensors().save(dict(tensors), metadata=metadata))
    return path


# ---- reading ------------------------------------------------------------------------------------
def _read_metadata(path, data):
    """Validates the safetensors framing; returns our metadata dict."""
    if len(data) < 8:
        raise CheckpointError(path, f"truncated or not a checkpoint: {len(data)} bytes, fewer "
                                    "than the 8 of a safetensors header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise CheckpointError(path, f"truncated or not a checkpoint: the header length says "
                                    f"{n} bytes, only {len(data) - 8} follow")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except RecursionError:
        raise CheckpointError(path, "corrupted header (JSON nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(path, f"not a checkpoint or a corrupted header (no JSON: {e})") \
            from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(path, f"not an rnncore checkpoint (its safetensors metadata has "
                                    f"no format {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"checkpoint format version {metadata.get('format_version')!r}"
                                    f" is not the supported {FORMAT_VERSION!r}")
    for key in ("meta", "sha256"):
        if not isinstance(metadata.get(key), str):
            raise CheckpointError(path, f"malformed header: metadata field {key!r} must be a "
                                        f"string, got {type(metadata.get(key)).__name__}")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                  default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(path, "corrupted header (tensor entries without data_offsets)") \
            from None
    held = len(data) - 8 - n
    if end != held:
        raise CheckpointError(path, f"{'truncated' if end > held else 'corrupted'}: the header "
                                    f"promises {end} bytes of tensor data, the file holds {held}")
    return metadata


def load(path):
    """Reads and verifies a checkpoint; returns a Checkpoint (changes nothing else)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    metadata = _read_metadata(path, data)
    try:
        tensors = _safetensors().load(data)
    except Exception as e:  # safetensors' own error type is not part of its numpy API
        raise CheckpointError(path, f"corrupted tensor data ({e})") from None
    meta_json = metadata.get("meta", "")
    if metadata.get("sha256") != _digest(meta_json, tensors):
        raise CheckpointError(path, "corrupted: the checksum of its tensors and metadata does not "
                                    "match the one written with them")
    meta = _parse_meta(path, meta_json)
    model = OrderedDict()
    opt_meta = meta.get("optimizer")
    opt_state = None if opt_meta is None else OrderedDict((n, OrderedDict())
                                                          for n in opt_meta["params"])
    arrays = {}
    for key in sorted(tensors):
        kind, _, rest = key.partition(".")
        if kind == "model":
            model[rest] = tensors[key]
            continue
        if kind == "arrays":
            arrays[rest] = tensors[key]
            continue
        name, _, buffer = rest.rpartition(".")
        if kind != "optim" or opt_state is None or name not in opt_state:
            raise CheckpointError(path, f"unexpected tensor {key!r}")
        opt_state[name][buffer] = tensors[key]
    optimizer = None
    if opt_meta is not None:
        optimizer = {"type": opt_meta["type"], "hyperparameters": opt_meta["hyperparameters"],
                     "step": opt_meta["step"], "state": opt_state}
    return Checkpoint(path=path, model=model, optimizer=optimizer,
                      scheduler=meta.get("scheduler"), step=meta["step"],
                      rng_state=meta.get("rng"), module_rngs=meta.get("module_rngs", {}),
                      config=meta.get("config"), extra=meta.get("extra"), arrays=arrays,
                      modules=meta.get("modules"))


def _malformed(path, where, what, value):
    return CheckpointError(path, f"malformed header: {where} must be {what}, got {value!r}"[:300])


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_meta(path, meta_json):
    """The "meta" JSON of a checked file, every field's type checked: CheckpointError naming
    the field (never TypeError, KeyError or RecursionError) for anything else."""
    try:
        meta = _from_json(json.loads(meta_json))
    except RecursionError:
        raise CheckpointError(path, "malformed header: meta is nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(path, f"malformed header: meta is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _malformed(path, "meta", "an object", type(meta).__name__)
    for key in ("step", "module_rngs"):
        if key not in meta:
            raise CheckpointError(path, f"malformed header: meta has no field {key!r}")
    if not _is_count(meta["step"]):
        raise _malformed(path, "meta.step", "a non-negative integer", meta["step"])
    for key in ("rng", "scheduler"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _malformed(path, f"meta.{key}", "an object or null", meta[key])
    rngs = meta["module_rngs"]
    if not isinstance(rngs, dict) or not all(isinstance(v, dict) for v in rngs.values()):
        raise _malformed(path, "meta.module_rngs", "an object of objects", rngs)
    modules = meta.get("modules")
    if modules is not None and not (isinstance(modules, dict) and all(
            isinstance(v, dict) and all(isinstance(v.get(k), str)
                                        for k in ("class", "cell", "precision"))
            for v in modules.values())):
        raise _malformed(path, "meta.modules", 'an object of {"class", "cell", "precision"} '
                         "strings", modules)
    opt = meta.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict):
            raise _malformed(path, "meta.optimizer", "an object or null", opt)
        checks = {"type": (isinstance(opt.get("type"), str), "a string"),
                  "hyperparameters": (isinstance(opt.get("hyperparameters"), dict), "an object"),
                  "step": (_is_count(opt.get("step")), "a non-negative integer"),
                  "params": (isinstance(opt.get("params"), list) and
                             all(isinstance(p, str) for p in opt.get("params")),
                             "a list of strings")}
        for key, (ok, what) in checks.items():
            if not ok:
                raise _malformed(path, f"meta.optimizer.{key}", what, opt.get(key))
    return meta


def _message(e):
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)


def restore(path, model, optimizer=None, scheduler=None, rng=None):
    """Loads a checkpoint into model (and optimizer, scheduler, and the numpy Generator rng, in
    place) after checking that everything matches: parameter names, shapes and dtypes, the
    optimiser's type, parameters and buffers, the schedule's type, the generators. Any mismatch
    raises CheckpointError and changes nothing. Returns the Checkpoint (step, config, extra)."""
    ck = load(path)
    _check_variants(ck, model)
    _check_model(ck, model)
    if optimizer is not None:
        _check_optimizer(ck, optimizer)
    if scheduler is not None:
        _check_scheduler(ck, scheduler)
    states = _generator_states(ck, model, rng)
    # every check passed: nothing below can fail on the file's content
    model.load_state_dict(ck.model)
    if optimizer is not None:
        optimizer.load_state_dict(ck.optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(ck.scheduler)
    for g, state in states:
        g.bit_generator.state = state
    return ck


def _describe(variant):
    """"GRU(reset_after=False) (cell 'gru_reset_before')": the public constructor options that
    select the registry cell, where the registry knows them."""
    options = ""
    for table in (registry.module_variant, registry.cell_variant):
        try:
            cls, opts = table(variant["cell"])
        except (KeyError, ValueError):
            continue
        if cls.__name__ == variant["class"]:
            options = ", ".join(f"{k}={v!r}" for k, v in opts.items())
            break
    return f"{variant['class']}({options}) (cell {variant['cell']!r})"


def _check_variants(ck, model):
    """CheckpointError when a recurrent module of the file runs another registry cell (GRU
    reset_after, RNN nonlinearity) than the model's, naming both. Files written before the
    variants were recorded (no "modules") are not checked."""
    if ck.modules is None:
        return
    ours = module_variants(model)
    for name in sorted(set(ours) & set(ck.modules)):
        theirs, mine = ck.modules[name], ours[name]
        if theirs["cell"] != mine["cell"]:
            where = f"module {name!r}" if name else "the model"
            raise CheckpointError(ck.path, f"{where} is {_describe(mine)}, the file's is "
                                           f"{_describe(theirs)}: another cell variant")


def _check_model(ck, model):
    """CheckpointError unless the file's parameters have the model's names, shapes and dtypes."""
    path, params = ck.path, model.params
    missing, unexpected = key_differences(params, ck.model)
    if missing or unexpected:
        parts = ([f"missing in the file {missing}"] if missing else []) + \
                ([f"not in the model {unexpected}"] if unexpected else [])
        raise CheckpointError(path, "the model's parameters do not match the file's: "
                              + "; ".join(parts))
    for k, p in params.items():
        a = ck.model[k]
        if a.shape != p.shape:
            raise CheckpointError(path, f"model.{k} has shape {a.shape} in the file, the model's "
                                        f"is {p.shape}")
        if a.dtype != p.dtype:
            raise CheckpointError(path, f"model.{k} has dtype {a.dtype} in the file, the model's "
                                        f"is {p.dtype}")


def _check_optimizer(ck, optimizer):
    path = ck.path
    if ck.optimizer is None:
        raise CheckpointError(path, "holds no optimizer state, but an optimizer was given")
    try:
        optimizer._check_state_dict(ck.optimizer)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(path, f"the optimizer does not match the file's: {_message(e)}") \
            from None
    for (name, p, _) in optimizer._params:
        for b, a in ck.optimizer["state"][name].items():
            if a.dtype != p.dtype:
                raise CheckpointError(path, f"optim.{name}.{b} has dtype {a.dtype} in the "
                                            f"file, the parameter's is {p.dtype}")


def _check_scheduler(ck, scheduler):
    if ck.scheduler is None:
        raise CheckpointError(ck.path, "holds no schedule state, but a scheduler was given")
    try:
        scheduler._check_state_dict(ck.scheduler)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(ck.path, f"the scheduler does not match the file's: "
                                       f"{_message(e)}") from None


def _generator_states(ck, model, rng):
    """[(generator, the file's state for it)] for the model's generators and rng, checked."""
    path = ck.path
    generators = named_generators(model)
    names = sorted(n for n, _ in generators)
    if names != sorted(ck.module_rngs):
        raise CheckpointError(path, f"the model's random generators {names} do not match the "
                                    f"file's {sorted(ck.module_rngs)}")
    states = [(g, _bit_generator(path, ck.module_rngs[n], f"module_rngs[{n!r}]").state)
              for n, g in generators]
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        if ck.rng_state is None:
            raise CheckpointError(path, "holds no rng state, but an rng was given")
        states.append((rng, _bit_generator(path, ck.rng_state).state))
    for g, state in states:
        if type(g.bit_generator).__name__ != state["bit_generator"]:
            raise CheckpointError(path, f"a generator is {type(g.bit_generator).__name__}, the "
                                        f"file's state is for {state['bit_generator']}")
    return states
