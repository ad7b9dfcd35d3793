"""ONNX export and import: rnncore's recurrent modules and language model <-> ONNX graphs.

Export (`to_onnx`) writes each (layer, all its directions) as one standard ONNX operator --
`LSTM` (the peephole LSTM through its input `P`), `GRU` (`linear_before_reset` = `reset_after`)
or `RNN` (activation Tanh or Relu) -- chained through Transpose + Reshape, built with the onnx
helper API; `rnncore.lm.LanguageModel` adds `Gather` for the embedding and `MatMul` + `Add` for
the output layer. Import (`from_onnx`) builds an rnncore module from the weights of an ONNX
model's LSTM / GRU / RNN nodes (one node per layer). docs/onnx.md has the gate-order mappings,
the activations and what onnxruntime runs.

onnx is imported inside the functions only (pip install "rnncore[onnx]").

ONNX vs rnncore, per layer and direction d (G gate blocks of H rows each):
    W[d] (G*H, I)  = weight_ih  with its gate blocks reordered
    R[d] (G*H, H)  = weight_hh  with its gate blocks reordered
    B[d] (2*G*H,)  = [bias_ih, bias_hh], each reordered (absent when bias=False)
    P[d] (3*H,)    = weight_peephole rows [i, o, f] (ours are [i, f, o])
Gate blocks: ONNX LSTM [i, o, f, c] = our blocks [0, 3, 1, 2] of [i, f, g, o];
             ONNX GRU  [z, r, h]    = our blocks [1, 0, 2]    of [r, z, n].
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rnncore._ext import __version__
from rnncore._interop import blocks as _blocks
from rnncore._interop import inverse as _inverse
from rnncore.models.lm import LanguageModel
from rnncore.nn import registry as _registry
from rnncore.nn.module import float_dtype
from rnncore.nn.recurrent import GRU, LSTM, RNN, _RNNBase

DEFAULT_OPSET = 17
MIN_OPSET = 14  # the LSTM/GRU/RNN definitions with the `layout` attribute (read on import)


class _Operator(NamedTuple):
    op: str             # the ONNX operator
    order: tuple        # ONNX gate block k is our gate block order[k]
    activations: tuple  # the operator's activations for one direction (its defaults)
    option: str         # the constructor option of the class's `variants` the node expresses


# public class -> the ONNX operator that computes it. The option says which cell: LSTM
# peephole=True is the input P, GRU reset_after is linear_before_reset, RNN nonlinearity the
# activation (_NONLINEARITIES). A class (or option value) missing here has no ONNX operator.
_OPERATORS = {
    LSTM: _Operator("LSTM", (0, 3, 1, 2), ("Sigmoid", "Tanh", "Tanh"), "peephole"),
    GRU: _Operator("GRU", (1, 0, 2), ("Sigmoid", "Tanh"), "reset_after"),
    RNN: _Operator("RNN", (0,), ("Tanh",), "nonlinearity"),
}
_NONLINEARITIES = {"tanh": "Tanh", "relu": "Relu"}  # RNN(nonlinearity=) -> ONNX activation
_PEEPHOLE_ORDER = (0, 2, 1)  # ONNX P rows [i, o, f] from our rows [i, f, o]
_RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def _require_onnx():
    try:
        import onnx  # optional: onnx (rnncore[onnx])
    except ImportError as e:
        raise ImportError("rnncore.onnx needs the onnx package: pip install 'rnncore[onnx]' "
                          "(or pip install onnx; onnxruntime to run the exported models)") from e
    return onnx


# ---- export ---------------------------------------------------------------------------------

class _Graph:
    """Nodes, initializers and fresh names for one ONNX graph."""

    def __init__(self, onnx, elem_type, dtype):
        self.onnx = onnx
        self.elem_type = elem_type
        self.dtype = dtype
        self.nodes = []
        self.initializers = []
        self._names = set()

    def name(self, stem):
        name, k = stem, 1
        while name in self._names:
            k += 1
            name = f"{stem}_{k}"
        self._names.add(name)
        return name

    def constant(self, stem, value):
        name = self.name(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value),
                                                                    name))
        return name

    def weight(self, stem, value):
        return self.constant(stem, np.asarray(value, dtype=self.dtype))

    def node(self, op, inputs, stem, outputs=1, **attributes):
        names = [self.name(f"{stem}_{k}" if outputs > 1 else stem) for k in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names,
                                                     name=self.name(f"{stem}_node"),
                                                     **attributes))
        return names if outputs > 1 else names[0]


def _export_form(module):
    """(operator, activations of one direction, attributes) of the ONNX node that computes the
    module's cell; ValueError if there is none."""
    if not isinstance(module, _RNNBase):
        raise TypeError(f"model must be an rnncore RNN, LSTM, PeepholeLSTM or GRU module or an "
                        f"rnncore.lm.LanguageModel, got {type(module).__name__}")
    cls, options = _registry.module_variant(module.cell)
    operator = _OPERATORS.get(cls)
    value = options.get(operator.option) if operator else None
    if operator is None or set(options) != {operator.option} or (
            cls is RNN and value not in _NONLINEARITIES):
        raise ValueError(f"{module!r} runs the cell {module.cell!r}, which has no standard ONNX "
                         "operator (ONNX has LSTM with or without peepholes, GRU in both forms, "
                         "RNN with tanh or relu)")
    activations = (_NONLINEARITIES[value],) if cls is RNN else operator.activations
    attributes = {"linear_before_reset": int(value)} if cls is GRU else {}
    return operator, activations, attributes


def _exportable(cell):
    """Whether a registry cell has a standard ONNX operator."""
    try:
        _export_form(_registry.make_module(cell, 1, 1))
    except ValueError:
        return False
    return True


def _stack(g, module, x, h0, c0, lengths):
    """Adds the recurrent stack of `module` to graph g. x: name of the (T, B, I) input; h0, c0:
    names of (L*D, B, H) initial states or None; lengths: name of the int64 (B,) lengths or
    None. Returns the names of y (T, B, D*H), h_n and c_n (None unless an LSTM)."""
    spec, activations, attributes = _export_form(module)
    H, D, L = module.hidden_size, module.num_directions, module.num_layers
    two_states = spec.op == "LSTM"  # h and c (and the input slots initial_c, P)
    direction = "bidirectional" if D == 2 else "forward"
    sequence_lens = zero_length = None
    zero = []  # the scalar 0 initial state, made when first needed
    if lengths is not None:
        sequence_lens, zero_length = _length_inputs(g, lengths)
    h_parts, c_parts = [], []
    for layer in range(L):
        stem = f"l{layer}"
        W, R, B, P = _layer_weights(module, spec, layer)
        inputs = [x, g.weight(f"W_{stem}", W), g.weight(f"R_{stem}", R),
                  g.weight(f"B_{stem}", B) if B is not None else "", sequence_lens or ""]
        initial = _initial_states(g, h0, c0, layer, D)
        inputs.append(initial.get("h", ""))
        if two_states:
            inputs.append(initial.get("c", ""))
            inputs.append(g.weight(f"P_{stem}", P) if P is not None else "")
        while inputs[-1] == "":  # trailing optional inputs are left out
            inputs.pop()
        outs = g.node(spec.op, inputs, f"{spec.op.lower()}_{stem}",
                      outputs=3 if two_states else 2, hidden_size=H, direction=direction,
                      activations=list(activations) * D, **attributes)
        y, finals = outs[0], outs[1:]
        for name, final, parts in zip(("h", "c"), finals, (h_parts, c_parts)):
            if zero_length is not None:
                if name not in initial and not zero:
                    zero.append(g.weight("zero_state", np.zeros((), g.dtype)))
                final = g.node("Where", [zero_length, initial.get(name) or zero[0], final],
                               f"{name}_n_{stem}")
            parts.append(final)
        # Y (T, D, B, H) -> (T, B, D*H): the directions side by side, forward first
        y = g.node("Transpose", [y], f"y_{stem}_tbdh", perm=[0, 2, 1, 3])
        y_shape = g.constant(f"y_shape_{stem}", np.array([0, 0, D * H], np.int64))
        x = g.node("Reshape", [y, y_shape], f"y_{stem}", allowzero=0)
    h_n = g.node("Concat", h_parts, "h_n_all", axis=0) if L > 1 else h_parts[0]
    c_n = None
    if two_states:
        c_n = g.node("Concat", c_parts, "c_n_all", axis=0) if L > 1 else c_parts[0]
    return x, h_n, c_n


def _length_inputs(g, lengths):
    """(the int32 sequence_lens of the operators, a (1, B, 1) mask of the length-0 rows)."""
    sequence_lens = g.node("Cast", [lengths], "sequence_lens", to=g.onnx.TensorProto.INT32)
    # A length-0 sequence keeps its initial state in rnncore; the ONNX operators leave that
    # unspecified (onnxruntime returns zeros), so the graph selects the initial state itself.
    is_zero = g.node("Equal", [lengths, g.constant("zero_length", np.array(0, np.int64))],
                     "is_zero_length")
    zero_length = g.node("Reshape", [is_zero, g.constant("state_mask_shape",
                                                         np.array([1, -1, 1], np.int64))],
                         "zero_length_mask")
    return sequence_lens, zero_length


def _layer_weights(module, spec, layer):
    """The operator's W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or None and P (D, 3*H) or
    None of one layer, gates in the operator's order."""
    H, p = module.hidden_size, module.params
    W, R, B, P = [], [], [], []
    for d in range(module.num_directions):
        s = f"_l{layer}{'_reverse' if d else ''}"
        W.append(_blocks(p["weight_ih" + s], spec.order, H))
        R.append(_blocks(p["weight_hh" + s], spec.order, H))
        if module.bias:
            B.append(np.concatenate([_blocks(p["bias_ih" + s], spec.order, H),
                                     _blocks(p["bias_hh" + s], spec.order, H)]))
        if "weight_peephole" + s in p:
            P.append(p["weight_peephole" + s][list(_PEEPHOLE_ORDER)].reshape(-1))
    return (np.stack(W), np.stack(R), np.stack(B) if B else None,
            np.stack(P) if P else None)


def _initial_states(g, h0, c0, layer, D):
    """{"h": name, "c": name} of one layer's slices of the given initial states."""
    stem, initial = f"l{layer}", {}
    for name, state in (("h", h0), ("c", c0)):
        if state is not None:
            initial[name] = g.node("Slice", [
                state, g.constant(f"start_{stem}", np.array([layer * D], np.int64)),
                g.constant(f"end_{stem}", np.array([(layer + 1) * D], np.int64)),
                g.constant(f"axis_{stem}", np.array([0], np.int64))], f"initial_{name}_{stem}")
    return initial


def to_onnx(model, path=None, *, initial_state=False, lengths=False, dtype=None,
            opset=DEFAULT_OPSET):
    """An ONNX model (onnx.ModelProto) computing `model` in inference mode; saved to `path`
    when given (a file name or path-like).

    model: an rnncore RNN / LSTM / PeepholeLSTM / GRU module (any num_layers, bidirectional,
    batch_first, bias), the rnncore.torch module of one (converted with its to_numpy()), or an
    rnncore.lm.LanguageModel.
    Graph inputs: "x" (T, B, input_size) ((B, T, input_size) with batch_first), or "tokens"
    (T, B) int64 for a language model; with initial_state, "h0" (and "c0" for LSTMs) of shape
    (num_layers * num_directions, B, hidden_size); with lengths (modules only), "lengths"
    (B,) int64 with 0 <= lengths <= T. Graph outputs: "y" (or "logits" (T, B, vocab)), "h_n"
    (and "c_n"), the shapes rnncore returns. T and B are dynamic.
    dtype: float32 or float64 for the weights and the float inputs/outputs (default: the
    model's dtype; onnxruntime's CPU operators run float32 only). Dropout is not exported (an
    inference graph). opset: the ONNX opset, >= 14."""
    onnx = _require_onnx()
    if not isinstance(model, (LanguageModel, _RNNBase)) and callable(
            getattr(model, "to_numpy", None)):
        model = model.to_numpy()  # an rnncore.torch module: its numpy twin, same weights
    lm = isinstance(model, LanguageModel)
    module = model.rnn if lm else model
    _export_form(module)  # a ValueError for what ONNX cannot express, before the other checks
    if isinstance(opset, bool) or not isinstance(opset, int) or not (
            MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}] (this onnx), got {opset!r}")
    if lm and lengths:
        raise ValueError("lengths=True is for recurrent modules; a LanguageModel runs whole "
                         "(T, B) token blocks, got lengths=True")
    dtype = module.dtype if dtype is None else float_dtype(dtype)
    g = _Graph(onnx, onnx.helper.np_dtype_to_tensor_dtype(dtype), dtype)
    for name in ("x", "tokens", "h0", "c0", "lengths", "y", "logits", "h_n", "c_n"):
        g.name(name)  # the graph's input and output names are never given to inner values
    inputs, (x, h0, c0, lens) = _graph_inputs(g, model, module, lm, initial_state, lengths)
    y, h_n, c_n = _stack(g, module, x, h0, c0, lens)
    outputs = _graph_outputs(g, model, module, lm, y, h_n, c_n)
    graph = onnx.helper.make_graph(g.nodes, f"rnncore_{type(model).__name__}", inputs, outputs,
                                   g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnncore",
                                   producer_version=__version__,
                                   doc_string=f"rnncore {model!r}")
    proto.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save_model(proto, os.fspath(path))
    return proto


def _graph_inputs(g, model, module, lm, initial_state, lengths):
    """The graph's input declarations, and the names (x time-major, h0, c0, lengths) the
    stack reads (None for those not given)."""
    onnx, elem = g.onnx, g.elem_type
    info = onnx.helper.make_tensor_value_info
    H, LD = module.hidden_size, module.num_layers * module.num_directions
    inputs = []
    if lm:
        inputs.append(info("tokens", onnx.TensorProto.INT64, ["T", "B"]))
        x = g.node("Gather", [g.weight("embedding", model.embed.params["weight"]), "tokens"],
                   "embedded", axis=0)
    else:
        layout = ["B", "T"] if module.batch_first else ["T", "B"]
        inputs.append(info("x", elem, layout + [module.input_size]))
        x = g.node("Transpose", ["x"], "x_time_major", perm=[1, 0, 2]) if module.batch_first \
            else "x"
    two_states = _export_form(module)[0].op == "LSTM"
    h0 = c0 = None
    if initial_state:
        for name in ("h0", "c0") if two_states else ("h0",):
            inputs.append(info(name, elem, [LD, "B", H]))
        h0, c0 = "h0", ("c0" if two_states else None)
    lens = None
    if lengths:
        lens = "lengths"
        inputs.append(info("lengths", onnx.TensorProto.INT64, ["B"]))
    return inputs, (x, h0, c0, lens)


def _graph_outputs(g, model, module, lm, y, h_n, c_n):
    """Adds the output nodes (the language model's head, or y back to batch-first) and returns
    the graph's output declarations."""
    onnx, elem = g.onnx, g.elem_type
    info = onnx.helper.make_tensor_value_info
    H, LD = module.hidden_size, module.num_layers * module.num_directions
    outputs = []
    if lm:
        head = model.head
        logits = g.node("MatMul", [y, g.weight("head_weight_t", head.params["weight"].T)],
                        "head_matmul")
        if head.bias:
            logits = g.node("Add", [logits, g.weight("head_bias", head.params["bias"])],
                            "head_add")
        g.nodes.append(onnx.helper.make_node("Identity", [logits], ["logits"], name="logits_out"))
        outputs.append(info("logits", elem, ["T", "B", head.out_features]))
    else:
        layout = ["B", "T"] if module.batch_first else ["T", "B"]
        if module.batch_first:
            y = g.node("Transpose", [y], "y_batch_first", perm=[1, 0, 2])
        g.nodes.append(onnx.helper.make_node("Identity", [y], ["y"], name="y_out"))
        outputs.append(info("y", elem, layout + [module.num_directions * H]))
    for name, value in (("h_n", h_n), ("c_n", c_n)):
        if value is not None:
            g.nodes.append(onnx.helper.make_node("Identity", [value], [name], name=name + "_out"))
            outputs.append(info(name, elem, [LD, "B", H]))
    return outputs


# ---- import ---------------------------------------------------------------------------------

def _load(onnx, model):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_model_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load_model(os.fspath(model))
    raise TypeError(f"model must be an onnx.ModelProto, a file path or the serialized bytes, "
                    f"got {type(model).__name__}")


def _constants(onnx, graph):
    """name -> numpy array of every initializer and Constant node (with a tensor value)."""
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = onnx.numpy_helper.to_array(a.t)
    return values


def _select_nodes(graph, nodes):
    found = [n for n in graph.node if n.op_type in _RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    if not found:
        raise ValueError("the ONNX model has no LSTM, GRU or RNN node in its main graph")
    if nodes is None:
        return found
    if isinstance(nodes, (str, int)) and not isinstance(nodes, bool):
        nodes = [nodes]
    if not isinstance(nodes, Sequence) or not nodes:
        raise TypeError(f"nodes must be None, a node name or index, or a non-empty list of them, "
                        f"got {nodes!r}")
    by_name = {n.name: n for n in found if n.name}
    chosen = []
    for key in nodes:
        if isinstance(key, str):
            if key not in by_name:
                raise ValueError(f"nodes: no LSTM/GRU/RNN node named {key!r}; the model has "
                                 f"{[n.name for n in found]}")
            chosen.append(by_name[key])
        elif isinstance(key, int) and not isinstance(key, bool):
            if not -len(found) <= key < len(found):
                raise ValueError(f"nodes: index {key} out of range for the model's {len(found)} "
                                 f"LSTM/GRU/RNN nodes")
            chosen.append(found[key])
        else:
            raise TypeError(f"nodes: each entry must be a node name (str) or an index (int), "
                            f"got {key!r}")
    return chosen


def _describe(node):
    return f"{node.op_type} node {node.name or '(unnamed)'!r}"


def _attributes(onnx, node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node_layer(onnx, node, constants):
    """What one recurrent node holds: (cell, direction count, batch_first, weights per
    direction as dicts of our parameter stems, input size, hidden size, dtype)."""
    what = _describe(node)
    attrs = _attributes(onnx, node)
    direction = _node_direction(what, attrs)
    D = 2 if direction == "bidirectional" else 1

    def constant(k, label):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            return None
        if name not in constants:
            raise ValueError(f"{what}: its input {label} ({name!r}) is not an initializer or a "
                             "Constant, so it has no weights to import")
        return np.asarray(constants[name])

    W, R = constant(1, "W"), constant(2, "R")
    if W is None or R is None:
        raise ValueError(f"{what} has no W or R input")
    B, P = constant(3, "B"), constant(7, "P") if node.op_type == "LSTM" else None
    if W.ndim != 3 or W.shape[0] != D:
        raise ValueError(f"{what}: W must have shape ({D}, G*hidden_size, input_size) for "
                         f"direction {direction!r}, got {W.shape}")
    H = R.shape[-1]
    if "hidden_size" in attrs and attrs["hidden_size"] != H:
        raise ValueError(f"{what}: hidden_size attribute {attrs['hidden_size']} does not match R "
                         f"of shape {R.shape}")
    cell = _import_cell(what, node.op_type, attrs, D, P is not None)
    spec = _OPERATORS[_registry.module_variant(cell)[0]]
    G = len(spec.order)
    I = W.shape[2]
    for label, a, shape in (("W", W, (D, G * H, I)), ("R", R, (D, G * H, H)),
                            ("B", B, (D, 2 * G * H)), ("P", P, (D, 3 * H))):
        if a is not None and a.shape != shape:
            raise ValueError(f"{what}: {label} must have shape {shape}, got {a.shape}")
    directions = [_direction_weights(spec, d, W, R, B, P, H) for d in range(D)]
    layout = attrs.get("layout", 0)
    return dict(cell=cell, D=D, batch_first=bool(layout), weights=directions, input_size=I,
                hidden_size=H, bias=B is not None, dtype=W.dtype)


def _node_direction(what, attrs):
    """The node's direction ('forward' or 'bidirectional'); ValueError for what rnncore has no
    counterpart of (activation parameters, clipping, coupled gates, reverse-only layers)."""
    for unsupported in ("activation_alpha", "activation_beta", "clip"):
        if unsupported in attrs:
            raise ValueError(f"{what}: attribute {unsupported!r} has no rnncore counterpart "
                             f"(rnncore's cells use plain activations with no clipping)")
    if attrs.get("input_forget", 0):
        raise ValueError(f"{what}: input_forget=1 (coupled input and forget gates) has no rnncore "
                         "counterpart, expected 0")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{what}: direction must be 'forward' or 'bidirectional' (rnncore has no "
                         f"reverse-only layer), got {direction!r}")
    return direction


def _direction_weights(spec, d, W, R, B, P, H):
    """Direction d's weights under rnncore's parameter stems, gates back in rnncore's order."""
    G, inv = len(spec.order), _inverse(spec.order)
    w = {"weight_ih": _blocks(W[d], inv, H), "weight_hh": _blocks(R[d], inv, H)}
    if B is not None:
        w["bias_ih"] = _blocks(B[d, :G * H], inv, H)
        w["bias_hh"] = _blocks(B[d, G * H:], inv, H)
    if P is not None:
        w["weight_peephole"] = P[d].reshape(3, H)[list(_inverse(_PEEPHOLE_ORDER))]
    return w


def _import_cell(what, op, attrs, D, has_peephole):
    """The registry cell that computes what the node computes, or ValueError."""
    cls, operator = next((c, o) for c, o in _OPERATORS.items() if o.op == op)
    given = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    activations = [a.lower() for a in given] or [a.lower() for a in operator.activations] * D
    lbr = attrs.get("linear_before_reset", 0)
    options = None
    if cls is RNN:
        by_onnx = {v.lower(): k for k, v in _NONLINEARITIES.items()}
        if len(set(activations)) == 1 and activations[0] in by_onnx and len(activations) == D:
            options = {"nonlinearity": by_onnx[activations[0]]}
    elif activations == [a.lower() for a in operator.activations] * D:
        options = {"peephole": has_peephole} if cls is LSTM else {"reset_after": bool(lbr)}
    if options is not None:
        try:
            return _registry.select(cls, **options)
        except ValueError:
            pass
    expected = {"LSTM": "activations [Sigmoid, Tanh, Tanh] per direction",
                "GRU": "activations [Sigmoid, Tanh] per direction, linear_before_reset 0 or 1",
                "RNN": "activation Tanh or Relu, the same for both directions"}
    also = f" with linear_before_reset={lbr}" if op == "GRU" else ""
    raise ValueError(f"{what}: activations {given or '(the default)'}{also} have no rnncore "
                     f"counterpart; rnncore imports {op} with {expected[op]}")


def _chained(graph, earlier, later):
    """Whether the X input of node `later` is computed from an output of node `earlier`."""
    producer = {out: n for n in graph.node for out in n.output if out}
    targets = set(o for o in earlier.output if o)
    seen, todo = set(), [later.input[0]]
    while todo:
        name = todo.pop()
        if name in targets:
            return True
        if name in seen or name not in producer:
            continue
        seen.add(name)
        todo.extend(i for i in producer[name].input if i)
    return False


def from_onnx(model, nodes=None, *, batch_first=None, dtype=None):
    """An rnncore module with the weights of an ONNX model's LSTM / GRU / RNN nodes.

    model: an onnx.ModelProto, a file path, or the serialized bytes.
    nodes: which recurrent nodes: None (all of the main graph's, in graph order), a node name,
    an index among them, or a list of these. Several nodes become the layers of one stack, in
    the given order: they must compute the same cell with the same sizes and directions, and
    each node's input must be computed from the previous node's output.
    A node imports when rnncore computes exactly what it does: LSTM with activations
    (Sigmoid, Tanh, Tanh) (with P: PeepholeLSTM), GRU with (Sigmoid, Tanh) (reset_after =
    linear_before_reset), RNN with Tanh or Relu; direction forward or bidirectional; no clip,
    no input_forget. W and R (and B, P) must be initializers or Constant nodes; no B gives
    bias=False. batch_first: the module's layout (default: the nodes' `layout` attribute; a
    graph that transposes around layout-0 nodes, as to_onnx's batch_first export does, says
    nothing about it). dtype: the module's dtype (default: float64 for double weights, float32
    otherwise). ValueError names the node and what does not fit."""
    onnx = _require_onnx()

    proto = _load(onnx, model)
    graph = proto.graph
    chosen = _select_nodes(graph, nodes)
    constants = _constants(onnx, graph)
    layers = [_node_layer(onnx, n, constants) for n in chosen]
    first = layers[0]
    for k in range(1, len(layers)):
        layer, what = layers[k], _describe(chosen[k])
        for key in ("cell", "D", "hidden_size", "bias", "batch_first"):
            if layer[key] != first[key]:
                raise ValueError(f"{what} differs from {_describe(chosen[0])} in {key} "
                                 f"({layer[key]!r} vs {first[key]!r}): the nodes of one stack "
                                 "must compute the same cell with the same sizes")
        if layer["input_size"] != first["D"] * first["hidden_size"]:
            raise ValueError(f"{what} takes {layer['input_size']} inputs, expected "
                             f"{first['D'] * first['hidden_size']} (num_directions * hidden_size "
                             f"of the layer below)")
        if not _chained(graph, chosen[k - 1], chosen[k]):
            raise ValueError(f"{what}'s input is not computed from {_describe(chosen[k - 1])}'s "
                             "output, so they are not layers of one stack; pass nodes= to "
                             "import one node")
    if dtype is None:
        dtype = np.float64 if first["dtype"] == np.float64 else np.float32
    module = _registry.make_module(first["cell"], first["input_size"], first["hidden_size"],
                         num_layers=len(layers), bias=first["bias"],
                         batch_first=first["batch_first"] if batch_first is None else batch_first,
                         bidirectional=first["D"] == 2,
                         dtype=float_dtype(dtype))
    state = {}
    for k, layer in enumerate(layers):
        for d, weights in enumerate(layer["weights"]):
            for stem, value in weights.items():
                state[f"{stem}_l{k}{'_reverse' if d else ''}"] = value
    module.load_state_dict(state)
    return module
