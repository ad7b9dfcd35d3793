"""Keras weights <-> rnncore modules: Keras `LSTM`, `GRU` (both `reset_after` values) and
`SimpleRNN` layers, alone, in `Bidirectional(..., merge_mode="concat")`, or stacked.

`from_keras` builds an rnncore module from built Keras layers; `to_keras` writes a module's
weights into Keras layers (given, or new ones it makes). `keras_weights` and
`load_keras_weights` do the same conversion on plain numpy arrays and need no Keras at all.
Keras is imported inside the functions that need it only (Keras 3 on any backend; rnncore's
tests run it on the torch backend, KERAS_BACKEND=torch). docs/keras.md has the mappings.

Keras vs rnncore, per layer and direction (G gate blocks of H columns each):
    kernel           (I, G*H) = weight_ih.T with its gate blocks reordered
    recurrent_kernel (H, G*H) = weight_hh.T with its gate blocks reordered
    bias             (G*H,)   = bias_ih + bias_hh, reordered            (LSTM, SimpleRNN,
                                                                         GRU reset_after=False)
                     (2, G*H) = [bias_ih, bias_hh], each reordered      (GRU reset_after=True)
Gate blocks: Keras LSTM [i, f, c, o] = ours [i, f, g, o] (the same order);
             Keras GRU  [z, r, h]    = our blocks [1, 0, 2] of [r, z, n].
A merged Keras bias loads as bias_ih with bias_hh = 0: exact, since for these cells the two
biases only ever appear added together (the GRU's reset-before candidate adds b_hn outside r).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rnncore._interop import blocks as _blocks
from rnncore._interop import inverse as _inverse
from rnncore.nn import registry as _registry
from rnncore.nn.module import float_dtype, to_numpy
from rnncore.nn.recurrent import GRU, LSTM, RNN, _RNNBase


class _KerasLayer(NamedTuple):
    layer: str        # the Keras layer class
    order: tuple      # Keras gate block k is our gate block order[k]
    config: dict      # the Keras settings that make it compute our cell
    split_bias: bool  # Keras keeps the input and recurrent biases apart, bias (2, G*H)


_SIGMOID_TANH = {"activation": "tanh", "recurrent_activation": "sigmoid"}
_NONLINEARITIES = ("tanh", "relu")  # RNN(nonlinearity=) values SimpleRNN has under that name


def _keras_form(cls, options):
    """The Keras layer that computes the cell of public class `cls` with `options` (its
    `variants` entry), or None (a peephole LSTM, or any cell Keras has no layer for)."""
    if cls is LSTM and options == {"peephole": False}:
        return _KerasLayer("LSTM", (0, 1, 2, 3), dict(_SIGMOID_TANH), False)
    if cls is GRU and set(options) == {"reset_after"}:
        reset_after = bool(options["reset_after"])
        return _KerasLayer("GRU", (1, 0, 2), {**_SIGMOID_TANH, "reset_after": reset_after},
                           reset_after)
    if cls is RNN and set(options) == {"nonlinearity"} and \
            options["nonlinearity"] in _NONLINEARITIES:
        return _KerasLayer("SimpleRNN", (0,), {"activation": options["nonlinearity"]}, False)
    return None


def _cell_form(cell):
    """The Keras layer of a registry cell, through the public class that runs it, or None."""
    return _keras_form(*_registry.module_variant(cell)) if cell in _registry.CELLS else None


_WEIGHT_NAMES = ("kernel", "recurrent_kernel", "bias")


def _spec(module):
    if not isinstance(module, _RNNBase):
        raise TypeError(f"module must be an rnncore RNN, LSTM or GRU module, got "
                        f"{type(module).__name__}")
    form = _cell_form(module.cell)
    if form is None:
        raise ValueError(f"{module!r} runs the cell {module.cell!r}, which no Keras layer "
                         "computes (Keras has LSTM without peepholes, GRU with reset_after "
                         "True or False, SimpleRNN with tanh or relu)")
    return form


def _suffix(layer, direction):
    return f"_l{layer}{'_reverse' if direction else ''}"


# ---- numpy conversion -----------------------------------------------------------------------

def keras_weights(module):
    """The module's weights as Keras holds them: one list per layer, [kernel,
    recurrent_kernel, bias] (no bias with bias=False), forward then backward for a
    bidirectional layer (the order of Keras' Bidirectional.get_weights()). New arrays in the
    module's dtype."""
    spec = _spec(module)
    H, p = module.hidden_size, module.params
    out = []
    for layer in range(module.num_layers):
        arrays = []
        for d in range(module.num_directions):
            s = _suffix(layer, d)
            arrays.append(np.ascontiguousarray(_blocks(p["weight_ih" + s], spec.order, H).T))
            arrays.append(np.ascontiguousarray(_blocks(p["weight_hh" + s], spec.order, H).T))
            if module.bias:
                b_ih = _blocks(p["bias_ih" + s], spec.order, H)
                b_hh = _blocks(p["bias_hh" + s], spec.order, H)
                arrays.append(np.stack([b_ih, b_hh]) if spec.split_bias else b_ih + b_hh)
        out.append(arrays)
    return out


def _expected_shapes(module, layer, spec):
    H, G = module.hidden_size, len(spec.order)
    in_size = module.input_size if layer == 0 else module.num_directions * H
    shapes = [(in_size, G * H), (H, G * H)]
    if module.bias:
        shapes.append((2, G * H) if spec.split_bias else (G * H,))
    return shapes * module.num_directions


def load_keras_weights(module, weights):
    """Loads Keras-layout weights (as keras_weights returns them: one list of arrays per layer)
    into the module; returns it. Checks the count and every shape first (ValueError naming the
    layer and the array), then loads all at once."""
    spec = _spec(module)
    if not isinstance(weights, Sequence) or len(weights) != module.num_layers:
        got = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise ValueError(f"weights must be a list of {module.num_layers} per-layer lists "
                         f"(num_layers), got {got}")
    H = module.hidden_size
    inv = _inverse(spec.order)
    names = _WEIGHT_NAMES if module.bias else _WEIGHT_NAMES[:2]
    state = {}
    for layer, arrays in enumerate(weights):
        shapes = _expected_shapes(module, layer, spec)
        if not isinstance(arrays, Sequence) or len(arrays) != len(shapes):
            per = " per direction" if module.bidirectional else ""
            got = len(arrays) if isinstance(arrays, Sequence) else type(arrays).__name__
            raise ValueError(f"weights[{layer}] must hold {len(shapes)} arrays "
                             f"({', '.join(names)}{per}), got {got}")
        arrays = [np.asarray(to_numpy(a), dtype=module.dtype) for a in arrays]
        for k, (a, shape) in enumerate(zip(arrays, shapes)):
            if a.shape != shape:
                d, which = divmod(k, len(names))
                where = f" ({'backward' if d else 'forward'} direction)" \
                    if module.bidirectional else ""
                raise ValueError(f"weights[{layer}][{k}], the {names[which]}{where}, must have "
                                 f"shape {shape}, got {a.shape}")
        for d in range(module.num_directions):
            s = _suffix(layer, d)
            kernel, recurrent, *bias = arrays[d * len(names):(d + 1) * len(names)]
            state["weight_ih" + s] = _blocks(kernel.T, inv, H)
            state["weight_hh" + s] = _blocks(recurrent.T, inv, H)
            if bias:
                b = bias[0]
                b_ih, b_hh = (b[0], b[1]) if spec.split_bias else (b, np.zeros_like(b))
                state["bias_ih" + s] = _blocks(b_ih, inv, H)
                state["bias_hh" + s] = _blocks(b_hh, inv, H)
    return module.load_state_dict(state)


# ---- Keras layers ---------------------------------------------------------------------------

_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "Bidirectional")


def _class_name(layer):
    """The Keras class the layer is (or derives from) among _RECURRENT, else None."""
    for cls in type(layer).__mro__:
        if cls.__name__ in _RECURRENT:
            return cls.__name__
    return None


def _keras_layers(layers):
    """A layer, a sequence of layers, or a model (its recurrent layers, in order) -> list."""
    if _class_name(layers) is not None:
        return [layers]
    if isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)):
        found = list(layers)
        for k, layer in enumerate(found):
            if _class_name(layer) is None:
                raise TypeError(f"layers[{k}] must be a Keras LSTM, GRU, SimpleRNN or "
                                f"Bidirectional layer, got {type(layer).__name__}")
    elif hasattr(layers, "layers"):  # a Keras model: its recurrent layers
        found = [layer for layer in layers.layers if _class_name(layer) is not None]
        if not found:
            raise ValueError(f"the Keras model {getattr(layers, 'name', '')!r} has no LSTM, GRU, "
                             "SimpleRNN or Bidirectional layer")
    else:
        raise TypeError(f"layers must be a Keras LSTM / GRU / SimpleRNN / Bidirectional layer, a "
                        f"list of them or a Keras model, got {type(layers).__name__}")
    if not found:
        raise ValueError("layers is empty: give at least one Keras recurrent layer")
    return found


def _layer_cell(layer, where):
    """The registry cell of a plain Keras LSTM / GRU / SimpleRNN layer, or ValueError."""
    name = _class_name(layer)
    if name not in ("LSTM", "GRU", "SimpleRNN"):
        raise ValueError(f"{where}: a Bidirectional wrapper must hold a Keras LSTM, GRU or "
                         f"SimpleRNN layer, got {type(layer).__name__}")
    config = layer.get_config()
    forms = {cell: _cell_form(cell) for cell in _registry.CELLS}
    forms = {cell: form for cell, form in forms.items() if form and form.layer == name}
    for cell, form in forms.items():
        if all(config.get(k) == v for k, v in form.config.items()):
            return cell
    keys = sorted({k for form in forms.values() for k in form.config})
    got = ", ".join(f"{k}={config.get(k)!r}" for k in keys)
    supported = "; ".join(", ".join(f"{k}={v!r}" for k, v in form.config.items())
                          for form in forms.values())
    raise ValueError(f"{where}: Keras {name} with {got} has no rnncore counterpart; rnncore "
                     f"loads {name} with {supported}")


def _variables(layer, where):
    """name -> Keras variable of a plain recurrent layer: kernel, recurrent_kernel(, bias)."""
    if not getattr(layer, "built", False) or not layer.weights:
        raise ValueError(f"{where}: the Keras layer {layer.name!r} is not built and has no "
                         "weights yet (call it on an input or build(input_shape) first)")
    out = {}
    for v in layer.weights:
        name = getattr(v, "name", "").split("/")[-1].split(":")[0]
        if name in _WEIGHT_NAMES:
            out[name] = v
    names = _WEIGHT_NAMES if layer.get_config().get("use_bias", True) else _WEIGHT_NAMES[:2]
    if tuple(out) != names:
        raise ValueError(f"{where}: expected the weights {list(names)} in the Keras layer "
                         f"{layer.name!r}, found {[v.name for v in layer.weights]}")
    return out


def _directions(layer, where):
    """[forward layer] or [forward, backward] of a Bidirectional, checked."""
    if _class_name(layer) != "Bidirectional":
        if layer.get_config().get("go_backwards"):
            raise ValueError(f"{where}: Keras layer {layer.name!r} has go_backwards=True; "
                             "rnncore has no reverse-only layer (a Bidirectional wrapper maps to "
                             "bidirectional=True)")
        return [layer]
    merge = getattr(layer, "merge_mode", None)
    if merge != "concat":
        raise ValueError(f"{where}: Bidirectional layer {layer.name!r} has merge_mode={merge!r}; "
                         "rnncore's bidirectional output is merge_mode='concat' (forward first)")
    forward, backward = layer.forward_layer, layer.backward_layer
    if forward.get_config().get("go_backwards") or not backward.get_config().get("go_backwards"):
        raise ValueError(f"{where}: Bidirectional layer {layer.name!r} must have a forward "
                         "layer going forwards and a backward layer going backwards")
    return [forward, backward]


_LABELS = {"D": "directions", "bias": "use_bias"}  # _describe's keys as the messages say them


def _value(variable):
    """A numpy copy of a Keras variable's value (any backend)."""
    return np.array(to_numpy(getattr(variable, "value", variable)), copy=True)


def _describe(layers):
    """Per Keras layer: (cell, directions, units, use_bias, input size, [variables dict per
    direction]); ValueError for what rnncore does not compute."""
    out = []
    for k, layer in enumerate(layers):
        where = f"layers[{k}]"
        subs = _directions(layer, where)
        cells = [_layer_cell(sub, where) for sub in subs]
        units = [sub.get_config()["units"] for sub in subs]
        biases = [bool(sub.get_config().get("use_bias", True)) for sub in subs]
        if len(set(cells)) > 1 or len(set(units)) > 1 or len(set(biases)) > 1:
            raise ValueError(f"{where}: the two directions of Bidirectional layer "
                             f"{layer.name!r} differ ({cells}, units {units}, use_bias {biases})")
        variables = [_variables(sub, where) for sub in subs]
        out.append(dict(cell=cells[0], D=len(subs), units=units[0], bias=biases[0],
                        input_size=int(variables[0]["kernel"].shape[0]), variables=variables))
    return out


def from_keras(layers, *, batch_first=True, dtype=None):
    """An rnncore module with the weights of built Keras recurrent layers.

    layers: a Keras LSTM / GRU / SimpleRNN layer, a Bidirectional(..., merge_mode="concat")
    of one, a list of them (the layers of one stack, bottom first: the same kind, units,
    use_bias and directions, each taking the previous one's output), or a Keras model (its
    recurrent layers, in order). What maps: LSTM with activation tanh and recurrent_activation
    sigmoid; GRU with those, reset_after True or False; SimpleRNN with activation tanh or relu
    (anything else raises ValueError naming the layer and the setting). Dropout,
    recurrent_dropout, stateful and return_* settings concern Keras' training or outputs, not
    the weights, and are not carried over.
    batch_first: the module's layout (default True, Keras' (B, T, features)).
    dtype: the module's dtype (default: float64 for float64 Keras weights, float32 otherwise)."""

    layers = _keras_layers(layers)
    described = _describe(layers)
    first = described[0]
    for k in range(1, len(described)):
        layer = described[k]
        for key in ("cell", "D", "units", "bias"):
            if layer[key] != first[key]:
                raise ValueError(f"layers[{k}] differs from layers[0] in "
                                 f"{_LABELS.get(key, key)} ({layer[key]!r} vs "
                                 f"{first[key]!r}): the layers of one rnncore stack compute "
                                 f"the same cell with the same sizes")
        if layer["input_size"] != first["D"] * first["units"]:
            raise ValueError(f"layers[{k}] takes {layer['input_size']} inputs, expected "
                             f"{first['D'] * first['units']} (the output size of layers[{k - 1}])")
    weights = [[_value(v[name]) for v in layer["variables"] for name in v]
               for layer in described]
    if dtype is None:
        dtype = np.float64 if weights[0][0].dtype == np.float64 else np.float32
    module = _registry.make_module(first["cell"], first["input_size"], first["units"],
                         num_layers=len(layers), bias=first["bias"], batch_first=batch_first,
                         bidirectional=first["D"] == 2, dtype=float_dtype(dtype))
    return load_keras_weights(module, weights)


def _require_keras():
    try:
        import keras  # optional: keras (Keras 3)
    except ImportError as e:
        raise ImportError("making Keras layers needs Keras 3 (pip install keras; choose its "
                          "backend with KERAS_BACKEND, e.g. torch)") from e
    return keras


def _new_layers(module, spec):
    keras = _require_keras()
    made = []
    for layer in range(module.num_layers):
        in_size = module.input_size if layer == 0 else module.num_directions * module.hidden_size
        keras_layer = getattr(keras.layers, spec.layer)(
            module.hidden_size, return_sequences=True, use_bias=module.bias,
            dtype=module.dtype.name, **spec.config)
        if module.bidirectional:
            keras_layer = keras.layers.Bidirectional(keras_layer, merge_mode="concat",
                                                     dtype=module.dtype.name)
        keras_layer.build((None, None, in_size))
        made.append(keras_layer)
    return made


def to_keras(module, layers=None):
    """Writes the module's weights into Keras layers and returns them (a list, one per layer).

    layers: None makes new ones (Keras 3): per rnncore layer, the Keras layer that computes its
    cell with return_sequences=True, in the module's dtype, wrapped in
    Bidirectional(merge_mode="concat") when bidirectional, built. Or existing layers, as
    from_keras accepts them (a layer, a list, a model), which must compute the module's cell
    with its sizes (ValueError naming what differs); unbuilt ones are built first.
    A PeepholeLSTM has no Keras layer (ValueError)."""
    spec = _spec(module)
    weights = keras_weights(module)
    if layers is None:
        layers = _new_layers(module, spec)
    else:
        layers = _keras_layers(layers)
        if len(layers) != module.num_layers:
            raise ValueError(f"layers: {len(layers)} Keras recurrent layers for a module with "
                             f"num_layers={module.num_layers}")
        for k, layer in enumerate(layers):
            if not getattr(layer, "built", False):
                in_size = module.input_size if k == 0 else \
                    module.num_directions * module.hidden_size
                layer.build((None, None, in_size))
    described = _describe(layers)
    for k, layer in enumerate(described):
        want = dict(cell=module.cell, D=module.num_directions, units=module.hidden_size,
                    bias=module.bias)
        for key, value in want.items():
            if layer[key] != value:
                raise ValueError(f"layers[{k}] has {_LABELS.get(key, key)}="
                                 f"{layer[key]!r}, the module {module!r} needs {value!r}")
        variables = [v[name] for v in layer["variables"] for name in v]
        for variable, array in zip(variables, weights[k]):
            if tuple(variable.shape) != array.shape:
                raise ValueError(f"layers[{k}]: Keras weight {variable.name!r} has shape "
                                 f"{tuple(variable.shape)}, the module's is {array.shape}")
        for variable, array in zip(variables, weights[k]):
            variable.assign(array)  # Keras casts to the variable's own dtype
    return layers
