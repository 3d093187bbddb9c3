"""ONNX files: pixels in, probabilities out, for ONNX Runtime and every other ONNX runtime.

Converted from the TensorFlow graph of `classifier.Classifier` by tf2onnx (the `export` extra).
Keras' own `model.export(format="onnx")` of a model with its preprocessing layer makes the
normalisation's mean and variance two more required inputs; here they are graph constants.
"""

import collections
import os

import onnx
import tensorflow as tf
import tf2onnx
from onnx import numpy_helper

from keras_cvt import atomic, layer_norm_ops
from keras_cvt.export.classifier import Classifier
from keras_cvt.export.formats import DEFAULT_ONNX_OPSET


def export_onnx(model, path, input_size=None, opset=DEFAULT_ONNX_OPSET):
    """Writes `model` as an ONNX file: input `pixels`, output `probabilities`.

    `pixels` is float32 `[batch, height, width, 3]`, RGB in [0, 255], as
    `keras_cvt.transforms.evaluation_transform` makes them; the normalisation (and the softmax,
    for a classifier without activation) is inside the file, as in `export_for_serving`, and the
    model is in its folded inference form. `probabilities` is float32 `[batch, classes]`. The
    batch is free, and so are height and width for `input_size=None` (of a model built with
    `input_shape=(None, None, 3)`).

        session = onnxruntime.InferenceSession(path)
        probabilities = session.run(["probabilities"], {"pixels": pixels})[0]

    Args:
        model: a CvT classifier, as for `export_for_serving`.
        path: the file to write, ending in `.onnx`; written beside and renamed into place.
        input_size: the height and width of `pixels`, or None for any.
        opset: the ONNX opset, at least 13.

    Returns:
        The absolute path written.
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must end with .onnx, got {path!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"`opset` must be an integer of at least 13, got opset={opset!r}")
    classifier = Classifier(model)
    spec = classifier.pixels_spec(input_size)
    function = tf.function(lambda pixels: {"probabilities": classifier.probabilities(pixels)})
    converted, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    if opset >= LAYER_NORMALIZATION_OPSET:
        fuse_layer_norms(converted)
    with atomic.publish_file(path) as temporary:
        onnx.save(converted, temporary)
    return os.path.abspath(path)


# The first opset with ONNX's LayerNormalization operator.
LAYER_NORMALIZATION_OPSET = 17


# How tf2onnx writes `keras_cvt.LayerNorm.call`'s operations: some means as a
# GlobalAveragePool of rank-3 tokens (which averages the axes after the first two), the square
# as a product, rsqrt as the reciprocal of a square root.
_FORMS = layer_norm_ops.forms(
    mean=layer_norm_ops.Form((("ReduceMean", "GlobalAveragePool"),), "first"),
    subtract=layer_norm_ops.Form((("Sub",),), "pair"),
    square=layer_norm_ops.Form((("Mul",),), "both"),
    add=layer_norm_ops.Form((("Add",),), "pair"),
    rsqrt=layer_norm_ops.Form((("Reciprocal",), ("Sqrt",)), "first"),
    multiply=layer_norm_ops.Form((("Mul",),), "pair"),
)
# What reads a graph output, in `_Graph.readers`.
_GRAPH_OUTPUT = "graph output"


class _Graph(layer_norm_ops.GraphView):
    """An ONNX graph for `layer_norm_ops.match`: nodes are `NodeProto`s (told apart by their
    identity, stable while `nodes` holds them), values tensor names."""

    def __init__(self, graph, nodes):
        self._producers = {output: node for node in nodes for output in node.output}
        self._readers = collections.defaultdict(list)
        for node in nodes:
            for name in node.input:
                self._readers[name].append(id(node))
        for output in graph.output:
            self._readers[output.name].append(_GRAPH_OUTPUT)

    def op_type(self, node):
        return node.op_type

    def inputs(self, node):
        return list(node.input)

    def producer(self, value):
        return self._producers.get(value)

    def value_key(self, value):
        return value

    def node_key(self, node):
        return id(node)

    def readers(self, node):
        return [reader for name in node.output for reader in self._readers[name]]


def fuse_layer_norms(model):
    """Replaces each `keras_cvt.LayerNorm` as tf2onnx writes it (`keras_cvt.layer_norm_ops`),
    `(x - mean) * (reciprocal(sqrt(mean((x - mean)**2) + epsilon)) * gamma) + beta` over the last
    axis, with one LayerNormalization node, which ONNX Runtime runs as one kernel (and OpenVINO
    as one MVN). HF's ONNX file has them from PyTorch's LayerNorm; ONNX Runtime's own fusion does
    not match the form our LayerNorm takes for TensorFlow's sake. Returns how many were replaced.
    """
    graph = model.graph
    ranks = _ranks(model)
    # One list of the nodes, read throughout: the identities of protobuf's element objects are
    # stable only while they are held.
    all_nodes = list(graph.node)
    view = _Graph(graph, all_nodes)
    initializers = {initializer.name: initializer for initializer in graph.initializer}

    def per_channel(name):
        initializer = initializers.get(name)
        return initializer is not None and len(initializer.dims) == 1

    def last_axis_mean(node):
        """Whether `node` (a mean of `_FORMS`) averages the last axis, keeping it."""
        rank = ranks.get(node.input[0])
        if not rank:
            return False
        if node.op_type == "GlobalAveragePool":
            return rank == 3
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if attributes.get("keepdims", 1) != 1 or axes is None:
            return False
        return len(axes) == 1 and axes[0] in (-1, rank - 1)

    fused, replaced = [], set()
    for add in all_nodes:
        found = layer_norm_ops.match(view, add, _FORMS)
        if found is None or not layer_norm_ops.exclusive(view, found):
            continue
        x, gamma, beta, epsilon = (found.values[name] for name in layer_norm_ops.INPUTS)
        epsilon = initializers.get(epsilon)
        if not (per_channel(gamma) and per_channel(beta)) or epsilon is None:
            continue
        if numpy_helper.to_array(epsilon).size != 1:
            continue
        if not all(last_axis_mean(found.nodes[name]) for name in layer_norm_ops.MEANS):
            continue
        fusion = onnx.helper.make_node(
            "LayerNormalization",
            [x, gamma, beta],
            [add.output[0]],
            name=add.name + "/LayerNormalization",
            axis=-1,
            epsilon=float(numpy_helper.to_array(epsilon).reshape(())),
        )
        fused.append((add, fusion))
        replaced.update(id(n) for n in found.members)
    ordered = []
    replacements = {id(add): node for add, node in fused}
    for node in all_nodes:
        if id(node) in replacements:
            ordered.append(replacements[id(node)])
        elif id(node) not in replaced:
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    # The epsilons are attributes now: initializers nothing reads would be warned about.
    read = {name for node in graph.node for name in node.input}
    unread = [initializer for initializer in graph.initializer if initializer.name not in read]
    for initializer in unread:
        graph.initializer.remove(initializer)
    return len(fused)


def _ranks(model):
    """The rank of each tensor of `model` that ONNX's shape inference knows."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    ranks = {}
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks
