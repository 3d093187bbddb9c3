"""ONNX files: pixels in, probabilities out, for ONNX Runtime and every other ONNX runtime.

Converted from the TensorFlow graph of `classifier.Classifier` by tf2onnx (the `export` extra).
Keras' own `model.export(format="onnx")` of a model with its preprocessing layer makes the
normalisation's mean and variance two more required inputs; here they are graph constants.
"""

import os

import tensorflow as tf
import tf2onnx

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
    function = tf.function(lambda pixels: {"probabilities": classifier.probabilities(pixels)})
    with atomic.publish_file(path) as temporary:
        tf2onnx.convert.from_function(function, input_signature=[spec], opset=opset, output_path=temporary)
    return os.path.abspath(path)
