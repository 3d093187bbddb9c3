"""A model as one TensorFlow function with its weights baked in as graph constants.

`freeze_for_inference(model)` traces `model(x, training=False)` once and turns every variable
it reads into a constant of the graph. Where TensorFlow runs oneDNN (its x86 builds, by
default), the graph is then rewritten in two ways:

- each `keras_cvt.LayerNorm` is replaced by oneDNN's fused LayerNorm kernel: one pass instead
  of nine elementwise operations. TensorFlow's own graph optimizer makes that substitution only
  for the FusedBatchNorm form of Keras 2's LayerNormalization, and the model code, which runs
  on every Keras backend, cannot name a TensorFlow kernel. In a bfloat16 model the kernel runs
  in bfloat16 (statistics in float32), without the casts to float32 and back around it;
- each float32 matmul weight is read through a `PlaceholderWithDefault` (which returns the constant:
  nothing can feed it inside the function). oneDNN repacks a constant weight once into a
  blocked layout of its choosing and caches it; for the 197-token rows of CvT's last stage
  (an odd row count) that layout's kernel is 20-35% slower than the plain one that a
  non-constant weight gets (microbenchmark, 197x1536 by 1536x384: 1.52 ms against 1.12 ms; at
  196 or 6304 rows the two are within 3%). For bfloat16 the blocked layout is the faster one,
  so those weights stay constants.

Timed in turns in one process on the benchmark machine, with perturbed (trained-like) weights,
the frozen folded CvT-13 answered batch 1 about 3% sooner than the unfrozen folded model (4%
sooner than with constant weights) and ran batch 32 about 6% faster (1.4% less than with
constant weights; 3.5% from the fused LayerNorms); the frozen bfloat16 copy ran batch 32 3%
faster with its LayerNorms in bfloat16 than cast to float32. The benchmark (`benchmarks/bench.py`,
"frozen" rows) reports the same measures side by side.

The frozen function is TensorFlow-only and inference-only: it holds copies of the weights at
freezing time (later changes to the model do not reach it), and cannot be trained. Freeze the
output of `keras_cvt.optimize_for_inference`.
"""
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import node_def_pb2

from keras_cvt import layer_norm_ops
from keras_cvt.inference import _tf_internals

# Reads a constant as a non-constant: the function cannot feed it, and TensorFlow's constant
# folding leaves it in place.
PLAIN_WEIGHT = "PlaceholderWithDefault"
# oneDNN's LayerNorm kernel, which TensorFlow's graph optimizer substitutes only for the
# FusedBatchNorm form of Keras 2's LayerNormalization, never for the elementwise form that
# `keras_cvt.LayerNorm` runs on every backend.
FUSED_LAYER_NORM = "_MklLayerNorm"


class FrozenFunction:
    """`model(x, training=False)` as a TensorFlow graph with the weights as constants.

    Call it on a batch (a tensor or NumPy array of the model's input shape; float32 when the
    model takes floats, also for a bfloat16 or float16 model); it returns what the model
    returns, as TensorFlow tensors.

    Where TensorFlow runs oneDNN (x86 CPUs by default), each LayerNorm becomes oneDNN's fused
    LayerNorm kernel, one operation instead of nine (in bfloat16 for a bfloat16 model), and
    float32 matmul weights are read as non-constants, which keeps oneDNN on its plain-layout
    kernel (see the module docstring).

    Attributes:
        input_signature: the `tf.TensorSpec` it takes (batch size None: any batch).
        graph_def: the frozen `GraphDef`.
        layer_norms: how many LayerNorms the rewrite recognised in the graph (on every machine).
        fused_layer_norms: how many of them run as oneDNN's kernel (all where it exists, else 0).
        plain_layout_matmuls: how many matmuls read their weight as a non-constant.
    """

    def __init__(self, model, batch_size=None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
        if len(model.inputs) != 1:
            raise ValueError(f"`model` must have one input, got {len(model.inputs)}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be None or a positive int, got {batch_size!r}")
        (model_input,) = model.inputs
        dtype = tf.as_dtype(model_input.dtype)
        # Images come as float32 also for a bfloat16 or float16 model, which casts them itself.
        self.input_signature = tf.TensorSpec(
            (batch_size,) + tuple(model_input.shape[1:]),
            tf.float32 if dtype.is_floating else dtype,
            name="x",
        )
        traced = tf.function(lambda x: model(x, training=False))
        concrete = traced.get_concrete_function(self.input_signature)
        self._outputs = concrete.structured_outputs
        function = _tf_internals.convert_variables_to_constants_v2(concrete)
        # Matched on every machine, so that a LayerNorm the match misses shows everywhere
        # (tests/test_frozen.py holds the count to the model's LayerNorm layers); replaced only
        # where the kernel exists.
        matches = find_layer_norms(function.graph)
        self.layer_norms = len(matches)
        self.fused_layer_norms = self.plain_layout_matmuls = 0
        if onednn_enabled():
            graph_def = function.graph.as_graph_def()
            if fused_layer_norm_available():
                self.fused_layer_norms = fuse_layer_norms(graph_def, matches)
            self.plain_layout_matmuls = _plain_layout_matmul_weights(graph_def)
            if self.fused_layer_norms or self.plain_layout_matmuls:
                function = _function_from_graph_def(graph_def, function.inputs, function.outputs)
        self._function = function
        self.graph_def = function.graph.as_graph_def()

    def __call__(self, x):
        x = tf.convert_to_tensor(x, self.input_signature.dtype)
        if not self.input_signature.shape.is_compatible_with(x.shape):
            raise ValueError(
                f"`x` must have shape {self.input_signature.shape}, got {tuple(x.shape)}"
            )
        return tf.nest.pack_sequence_as(self._outputs, self._function(x))


def freeze_for_inference(model, batch_size=None):
    """Returns `model`'s inference as a TensorFlow function with the weights as constants.

    Args:
        model: a `keras.Model` with one input, such as `optimize_for_inference(CvT13(...))`.
        batch_size: None for any batch size, or the one batch size the function takes. A
            fixed batch size makes every shape in the graph static, so the shape arithmetic a
            dynamic batch needs (some 220 small operations in CvT-13) is folded away: for
            single images, `batch_size=1` answered 2.4% sooner than `None` (CvT-13 at 224,
            timed in turns in one process).

    Returns:
        A `FrozenFunction`: `frozen(images)` equals `model(images, training=False)`.
    """
    return FrozenFunction(model, batch_size=batch_size)


def onednn_enabled():
    """Whether this TensorFlow runs its oneDNN kernels (x86 builds, unless turned off)."""
    return _tf_internals.onednn_enabled()


def fused_layer_norm_available():
    """Whether this TensorFlow runs oneDNN and has its LayerNorm kernel."""
    return onednn_enabled() and _tf_internals.op_registered(FUSED_LAYER_NORM)


def _tensor_name(tensor):
    return tensor.op.name if tensor.value_index == 0 else f"{tensor.op.name}:{tensor.value_index}"


def _constant(tensor):
    return tf.get_static_value(tensor) if tensor.op.type == "Const" else None


# How a frozen TensorFlow graph writes `keras_cvt.LayerNorm.call`'s operations.
_FORMS = layer_norm_ops.forms(
    mean=layer_norm_ops.Form((("Mean",),), "first"),
    subtract=layer_norm_ops.Form((("Sub",),), "pair"),
    square=layer_norm_ops.Form((("Square",),), "first"),
    add=layer_norm_ops.Form((("AddV2",),), "pair"),
    rsqrt=layer_norm_ops.Form((("Rsqrt",),), "first"),
    multiply=layer_norm_ops.Form((("Mul",),), "pair"),
)


class _Graph(layer_norm_ops.GraphView):
    """A `tf.Graph` for `layer_norm_ops.match`: nodes are `tf.Operation`s, values tensors."""

    def op_type(self, node):
        return node.type

    def inputs(self, node):
        return list(node.inputs)

    def producer(self, value):
        return value.op

    def value_key(self, value):
        return value.name

    def node_key(self, node):
        return node.name

    def readers(self, node):
        return [reader.name for output in node.outputs for reader in output.consumers()]


def _match_layer_norm(graph, output):
    """`(x, gamma, beta, epsilon)` when `output` ends `keras_cvt.LayerNorm.call`'s operations
    (`keras_cvt.layer_norm_ops.STEPS`) over the last axis of float32 tokens, and nothing
    outside reads its intermediate results; else None."""
    found = layer_norm_ops.match(graph, output, _FORMS)
    if found is None or not layer_norm_ops.exclusive(graph, found):
        return None
    x, gamma, beta = (found.values[name] for name in ("x", "gamma", "beta"))
    epsilon = _constant(found.values["epsilon"])
    rank, channels = x.shape.rank, x.shape[-1] if x.shape.rank else None
    if epsilon is None or np.size(epsilon) != 1 or channels is None or x.dtype != tf.float32:
        return None
    for reduction in (found.nodes[name] for name in layer_norm_ops.MEANS):
        axis = _constant(reduction.inputs[1])
        if not reduction.get_attr("keep_dims") or axis is None or np.size(axis) != 1:
            return None
        if int(np.reshape(axis, ())) not in (-1, rank - 1):
            return None
    if any(v.shape.as_list() != [channels] or v.dtype != tf.float32 for v in (gamma, beta)):
        return None
    return x, gamma, beta, float(np.reshape(epsilon, ()))


def _node(name, op, inputs, **attrs):
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _bfloat16_layer_norm(output, x):
    """`(cast, source)` when a LayerNorm ending in `output` normalises bfloat16 tokens in
    float32: `x` is `source` (bfloat16) cast up, and `cast`, the one reader of `output`,
    casts the result back down; else None."""
    if x.op.type != "Cast" or x.op.inputs[0].dtype != tf.bfloat16:
        return None
    readers = output.outputs[0].consumers()
    if len(readers) != 1 or readers[0].type != "Cast" or readers[0].outputs[0].dtype != tf.bfloat16:
        return None
    return readers[0], x.op.inputs[0]


class LayerNormMatch:
    """A `keras_cvt.LayerNorm` found in a graph: its last op (`output`), its input `x`,
    `gamma`, `beta` (tensors) and `epsilon` (a float)."""

    def __init__(self, output, x, gamma, beta, epsilon):
        self.output, self.x, self.gamma, self.beta, self.epsilon = output, x, gamma, beta, epsilon


def find_layer_norms(graph):
    """Every `keras_cvt.LayerNorm` of `graph` (a frozen float32 or bfloat16-in-float32 form
    whose intermediate results nothing else reads), as `LayerNormMatch`es."""
    matches, view = [], _Graph()
    for op in graph.get_operations():
        match = _match_layer_norm(view, op)
        if match is not None:
            matches.append(LayerNormMatch(op, *match))
    return matches


def fuse_layer_norms(graph_def, matches):
    """Replaces, in `graph_def`, each LayerNorm of `matches` (`find_layer_norms` of the graph
    of `graph_def`) with oneDNN's kernel on its tokens
    flattened to `(-1, channels)` (the kernel takes rank 2 or 3), reshaped back. The output keeps
    the LayerNorm's name, so readers are unchanged; what it replaced is left unread, and pruned.

    A bfloat16 LayerNorm (bfloat16 tokens cast to float32, normalised, cast back) runs as the
    kernel's bfloat16 form, which computes its statistics in float32 itself: the two casts go,
    and the kernel reads and writes half the bytes (2.2-2.5x faster than the casts and float32
    kernel on CvT-13's batch-32 maps; results within a bfloat16 rounding of theirs). It then
    replaces the cast back, the LayerNorm's output. Returns how many were replaced."""
    int32 = tf.compat.v1.AttrValue(type=tf.int32.as_datatype_enum)
    float32 = tf.compat.v1.AttrValue(type=tf.float32.as_datatype_enum)
    added, replaced = [], {}
    for match in matches:
        op, x, gamma, beta, epsilon = match.output, match.x, match.gamma, match.beta, match.epsilon
        name, dtype = op.name, float32
        params = [_tensor_name(gamma), _tensor_name(beta)]
        narrowed = _bfloat16_layer_norm(op, x)
        if narrowed is not None:
            cast, x = narrowed
            name, dtype = cast.name, tf.compat.v1.AttrValue(type=tf.bfloat16.as_datatype_enum)
            added += [_node(f"{name}/fused/{part}", "Cast", [param], SrcT=float32, DstT=dtype,
                            Truncate=tf.compat.v1.AttrValue(b=False))
                      for part, param in zip(("gamma", "beta"), params)]
            params = [f"{name}/fused/gamma", f"{name}/fused/beta"]
        flat_shape = tf.make_tensor_proto(np.array([-1, x.shape[-1]], np.int32))
        added += [
            _node(f"{name}/fused/shape", "Shape", [_tensor_name(x)], T=dtype, out_type=int32),
            _node(f"{name}/fused/flat_shape", "Const", [], dtype=int32,
                  value=tf.compat.v1.AttrValue(tensor=flat_shape)),
            _node(f"{name}/fused/flat", "Reshape", [_tensor_name(x), f"{name}/fused/flat_shape"],
                  T=dtype, Tshape=int32),
            _node(f"{name}/fused/layer_norm", FUSED_LAYER_NORM, [f"{name}/fused/flat"] + params,
                  T=dtype, epsilon=tf.compat.v1.AttrValue(f=epsilon)),
        ]
        replaced[name] = _node(name, "Reshape", [f"{name}/fused/layer_norm", f"{name}/fused/shape"],
                               T=dtype, Tshape=int32)
    for node in graph_def.node:
        if node.name in replaced:
            node.CopyFrom(replaced[node.name])
    graph_def.node.extend(added)
    return len(replaced)


def _plain_layout_matmul_weights(graph_def):
    """Makes each float32 MatMul in `graph_def` read its frozen weight (a Const, or the Identity
    that stood for the variable read) through a `PlaceholderWithDefault` of it. Returns how many.

    bfloat16 weights stay constants: their blocked layout is the faster one (frozen bfloat16
    CvT-13, batch 32: 5% slower with plain-layout weights; batch 1: the same)."""
    nodes = {node.name: node for node in graph_def.node}
    added, count = {}, 0
    for node in graph_def.node:
        if node.op != "MatMul":
            continue
        weight = nodes.get(node.input[1].split(":")[0])
        if weight is not None and weight.op == "Identity":
            weight = nodes.get(weight.input[0].split(":")[0])
        if weight is None or weight.op != "Const" or weight.attr["dtype"].type != tf.float32:
            continue
        name = f"{weight.name}/plain_layout"
        if name not in added:
            added[name] = _node(
                name, PLAIN_WEIGHT, [weight.name], dtype=weight.attr["dtype"],
                shape=tf.compat.v1.AttrValue(shape=weight.attr["value"].tensor.tensor_shape),
            )
        node.input[1] = name
        count += 1
    graph_def.node.extend(added.values())
    return count


def _function_from_graph_def(graph_def, inputs, outputs):
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), []
    )
    tensor = wrapped.graph.get_tensor_by_name
    return wrapped.prune([tensor(t.name) for t in inputs], [tensor(t.name) for t in outputs])
