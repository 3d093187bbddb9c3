"""OpenVINO IR files (`.xml` with its `.bin`): pixels in, probabilities out.

Converted from the TensorFlow graph of `classifier.Classifier` by OpenVINO's own TensorFlow
front end (`openvino.convert_model`, the `export` extra), without going through ONNX.
"""

import os

import numpy as np
import openvino
import tensorflow as tf
from openvino import opset13

from keras_cvt import atomic, layer_norm_ops
from keras_cvt.export.classifier import Classifier
from keras_cvt.export.openvino_projections import batch_first_projections

# What `compile_model`'s INFERENCE_PRECISION_HINT takes: float32, or bfloat16 on CPUs with
# AVX-512 BF16 or AMX. OpenVINO's CPU plugin picks bfloat16 by itself on those CPUs; ask for
# "f32" to get the Keras model's numbers.
PRECISIONS = ("f32", "bf16")


def export_openvino(model, path, input_size=None):
    """Writes `model` as an OpenVINO IR: `path` (`.xml`) and its weights beside it (`.bin`).

    Input `pixels` (float32 `[batch, height, width, 3]`, RGB in [0, 255]) and output
    `probabilities` (float32 `[batch, classes]`), the normalisation and folded model inside, as
    for `export_onnx`; the batch is free, and so are height and width for `input_size=None`.
    The weights are stored in float32; the precision is chosen when the file is compiled:

        compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        probabilities = compiled(pixels)["probabilities"]

    OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it (AVX-512 BF16,
    AMX): faster, with probabilities within about 1e-2 of float32's (see the tests).

    The `.bin` is published first, then the `.xml`, each by an atomic rename: a kill between
    the two leaves the new `.bin` beside the old `.xml`, which then fails to load by size.

    Args:
        model: a CvT classifier, as for `export_for_serving`.
        path: the `.xml` file to write; the `.bin` gets the same name.
        input_size: the height and width of `pixels`, or None for any.

    Returns:
        The absolute path of the `.xml`.
    """
    path = os.fspath(path)
    if not path.endswith(".xml"):
        raise ValueError(f"`path` must end with .xml (its weights go to the .bin beside it), got {path!r}")
    classifier = Classifier(model)
    spec = classifier.pixels_spec(input_size)
    function = tf.function(lambda pixels: {"probabilities": classifier.whole_score_probabilities(pixels)})
    converted = openvino.convert_model(function.get_concrete_function(spec))
    _fuse_layer_norms(converted)
    batch_first_projections(converted)
    save_ir(converted, path)
    return os.path.abspath(path)


def save_ir(model, path):
    """Publishes the OpenVINO `model` as `path` (`.xml`) and its `.bin`, as `export_openvino`
    says (the int8 export writes through it too)."""
    weights = path[: -len(".xml")] + ".bin"
    with atomic.publish_file(path) as xml, atomic.publish_file(weights) as bin_file:
        openvino.save_model(model, xml, compress_to_fp16=False)
        os.replace(xml[: -len(".xml")] + ".bin", bin_file)


def _constant(values):
    return opset13.constant(np.array(values, np.int64))


def _constant_value(op, index):
    node = op.input(index).get_source_output().get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _per_channel(output):
    shape = output.get_partial_shape()
    return shape.is_static and int(np.prod(shape.to_shape()[:-1])) == 1


def _last_axis(reduce_op):
    axes = _constant_value(reduce_op, 1)
    rank = reduce_op.input(0).get_partial_shape().rank
    if axes is None or axes.size != 1 or not reduce_op.get_attributes()["keep_dims"] or rank.is_dynamic:
        return False
    return int(axes.reshape(())) in (-1, rank.get_length() - 1)


# How OpenVINO's TensorFlow front end writes `keras_cvt.LayerNorm.call`'s operations: the
# square as a product, rsqrt as a power (whose exponent, -0.5, is checked below).
_FORMS = layer_norm_ops.forms(
    mean=layer_norm_ops.Form((("ReduceMean",),), "first"),
    subtract=layer_norm_ops.Form((("Subtract",),), "pair"),
    square=layer_norm_ops.Form((("Multiply",),), "both"),
    add=layer_norm_ops.Form((("Add",),), "pair"),
    rsqrt=layer_norm_ops.Form((("Power",),), "first"),
    multiply=layer_norm_ops.Form((("Multiply",),), "pair"),
)


class _Graph(layer_norm_ops.GraphView):
    """An OpenVINO model for `layer_norm_ops.match`: nodes are its operations, values their
    outputs."""

    def op_type(self, node):
        return node.get_type_name()

    def inputs(self, node):
        return [node.input(i).get_source_output() for i in range(node.get_input_size())]

    def producer(self, value):
        return value.get_node()

    def value_key(self, value):
        return value.get_node().get_name(), value.get_index()

    def node_key(self, node):
        return node.get_name()

    def readers(self, node):
        return [target.get_node().get_name() for output in node.outputs() for target in output.get_target_inputs()]


def _fuse_layer_norms(model):
    """Replaces each `keras_cvt.LayerNorm` as the TensorFlow front end converts it
    (`keras_cvt.layer_norm_ops`), `(x - mean) * ((mean((x - mean)**2) + epsilon) ** -0.5 * gamma)
    + beta` over the last axis, with OpenVINO's MVN operation times gamma plus beta, which the CPU
    plugin runs as one kernel (HF's ONNX file gets MVNs from ONNX's LayerNormalization; without
    this ours had none). Measured on CvT-13: probabilities within 1e-8 of the unfused graph's,
    batch 1 about 5% sooner in bfloat16 (the same in float32). Returns how many were replaced."""
    count, view = 0, _Graph()
    for add in model.get_ordered_ops():
        found = layer_norm_ops.match(view, add, _FORMS)
        if found is None:
            continue
        x, gamma, beta, epsilon = (found.values[name] for name in layer_norm_ops.INPUTS)
        # One gamma and beta per channel (of shape (channels,) or (1, ..., channels)), constants:
        # then (x - mean) * (r * gamma) is mvn(x) * gamma.
        if any(v.get_node().get_type_name() != "Constant" or not _per_channel(v) for v in (gamma, beta)):
            continue
        exponent = _constant_value(found.nodes["inverse"], 1)
        if exponent is None or exponent.size != 1 or float(exponent.reshape(())) != -0.5:
            continue
        is_constant = epsilon.get_node().get_type_name() == "Constant"
        epsilon = epsilon.get_node().get_data() if is_constant else None
        if epsilon is None or epsilon.size != 1:
            continue
        if not all(_last_axis(found.nodes[name]) for name in layer_norm_ops.MEANS):
            continue
        normalised = opset13.mvn(x, _constant((-1,)), True, float(epsilon.reshape(())), "inside_sqrt")
        result = opset13.add(opset13.multiply(normalised, gamma), beta)
        for reader in add.output(0).get_target_inputs():
            reader.replace_source_output(result.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count
