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

from keras_cvt import atomic
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
    function = tf.function(lambda pixels: {"probabilities": classifier.file_probabilities(pixels)})
    converted, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset)
    if opset >= LAYER_NORMALIZATION_OPSET:
        fuse_layer_norms(converted)
    with atomic.publish_file(path) as temporary:
        onnx.save(converted, temporary)
    return os.path.abspath(path)


# The first opset with ONNX's LayerNormalization operator.
LAYER_NORMALIZATION_OPSET = 17


def fuse_layer_norms(model):
    """Replaces each `keras_cvt.LayerNorm` as tf2onnx writes it,
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
    producers = {output: node for node in all_nodes for output in node.output}
    readers = collections.Counter(name for node in all_nodes for name in node.input)
    readers.update(output.name for output in graph.output)
    initializers = {initializer.name: initializer for initializer in graph.initializer}

    def producer(name, op_type):
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def operands(node, op_type):
        """`node`'s two inputs, the one made by an `op_type` node first, or None."""
        first, second = node.input
        if producer(first, op_type) is not None:
            return producer(first, op_type), second
        if producer(second, op_type) is not None:
            return producer(second, op_type), first
        return None

    def per_channel(name):
        initializer = initializers.get(name)
        return initializer is not None and len(initializer.dims) == 1

    def last_axis_mean(name):
        """The node that makes `name` as the mean over the last axis, keeping it, or None:
        a ReduceMean, or a GlobalAveragePool of rank-3 tokens (which averages the axes after the
        first two), as tf2onnx writes some of them."""
        node = producers.get(name)
        rank = node is not None and ranks.get(node.input[0])
        if node is None or not rank:
            return None
        if node.op_type == "GlobalAveragePool":
            return node if rank == 3 else None
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if node.op_type != "ReduceMean" or attributes.get("keepdims", 1) != 1 or axes is None:
            return None
        return node if len(axes) == 1 and axes[0] in (-1, rank - 1) else None

    fused, replaced = [], set()
    for add in all_nodes:
        if add.op_type != "Add":
            continue
        matched = operands(add, "Mul")
        if matched is None or not per_channel(matched[1]):
            continue
        (scaled, beta) = matched
        centered_and_scale = operands(scaled, "Mul")
        if centered_and_scale is None:
            continue
        scale, centered_name = centered_and_scale
        centered = producer(centered_name, "Sub")
        gamma_operands = operands(scale, "Reciprocal")
        if centered is None or gamma_operands is None or not per_channel(gamma_operands[1]):
            continue
        reciprocal, gamma = gamma_operands
        root = producer(reciprocal.input[0], "Sqrt")
        shifted = root and producer(root.input[0], "Add")
        if not shifted:
            continue
        variance, epsilon = last_axis_mean(shifted.input[0]), initializers.get(shifted.input[1])
        square = variance and producer(variance.input[0], "Mul")
        x, mean_name = centered.input
        mean = last_axis_mean(mean_name)
        if epsilon is None or numpy_helper.to_array(epsilon).size != 1 or not square or mean is None:
            continue
        if list(square.input) != [centered.output[0]] * 2 or mean.input[0] != x:
            continue
        nodes = [mean, centered, square, variance, shifted, root, reciprocal, scale, scaled, add]
        # Each intermediate read only inside the pattern (the difference twice by the square and
        # once by the product).
        inside = collections.Counter(name for n in nodes for name in n.input)
        if any(readers[n.output[0]] != inside[n.output[0]] for n in nodes[:-1]):
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
        replaced.update(id(n) for n in nodes)
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
