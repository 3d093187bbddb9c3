"""TFLite files: pixels in, probabilities out, builtin operators only; and a runner for them."""

import contextlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_cvt import atomic
from keras_cvt.export.classifier import Classifier
from keras_cvt.pretrained import DEFAULT_TRANSFORM

TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_range")
# The signature the TFLite file is called through.
SIGNATURE = "serving_default"


def export_tflite(model, path, quantization=None, input_size=DEFAULT_TRANSFORM.size):
    """Writes `model` as a TFLite file: pixels in, probabilities out.

    The TFLite model takes images already transformed to `input_size` (input `pixels`,
    `float32`, shape `[batch, input_size, input_size, 3]`, RGB in [0, 255]; see
    `keras_cvt.transforms.evaluation_transform`), any batch, and returns `[batch, classes]`
    probabilities, with the normalisation and softmax in the model as in `export_for_serving`.
    With `input_size=None` it takes any height and width too (of a model built with
    `input_shape=(None, None, 3)`). It uses TFLite's builtin operators only (the depthwise
    convolutions become `DEPTHWISE_CONV_2D`), so it runs on the plain LiteRT runtime, without
    the Flex (select TF ops) delegate.

    Run it with `TFLiteClassifier`, which checks the input's shape, or with its signature:
    `interpreter.get_signature_runner()(pixels=x)["probabilities"]`, which resizes the input to
    each call's shape. With a fixed `input_size`, `pixels` of another height or width fail inside
    the runtime with a message that names neither (such as "XNNPack delegate failed to reshape
    runtimeNode number 181").

    Args:
        model: a CvT classifier, as for `export_for_serving`.
        path: the `.tflite` file to write; it is written beside and renamed into place, so an
            existing file is replaced whole.
        quantization: `None` (float32), `"float16"` (float16 weights, about half the size) or
            `"dynamic_range"` (int8 weights, about a quarter of the size, int8 matmuls where the
            runtime has them). Both change the probabilities slightly; check the accuracy you
            need on your data.
        input_size: the height and width of the input, or None for any.

    Returns:
        The absolute path written.
    """
    with _tflite_converter(model, quantization, input_size) as converter:
        flatbuffer = converter.convert()
    return atomic.write_bytes(path, flatbuffer)


class TFLiteClassifier:
    """A file of `export_tflite` as a function: pixels `[batch, height, width, 3]` -> probabilities.

    This checks `pixels` against the height and width the file takes (any, for a file exported
    with `input_size=None`), with an error that says what is expected, before the runtime sees
    them. Files of keras_cvt 0.2, whose batch is fixed at one image, are run one image at a time.

    Args:
        path: the `.tflite` file.
        num_threads: the interpreter's CPU threads (`None`: the runtime's default).

    Attributes:
        input_shape: `(height, width, 3)`, None for a dimension the file leaves free.
    """

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy of the runtime, deprecated in its favour
            Interpreter = tf.lite.Interpreter
        self.path = os.path.abspath(os.fspath(path))
        interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self._run = interpreter.get_signature_runner(SIGNATURE)
        shape = [int(d) for d in self._run.get_input_details()["pixels"]["shape_signature"]]
        self._one_at_a_time = shape[0] == 1
        self.input_shape = tuple(None if d < 0 else d for d in shape[1:])
        self.classes = int(self._run.get_output_details()["probabilities"]["shape"][-1])

    def __call__(self, pixels):
        """`pixels`: RGB in [0, 255], as `keras_cvt.transforms.evaluation_transform` makes them."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or any(d not in (None, n) for d, n in zip(self.input_shape, pixels.shape[1:])):
            height, width = self.input_shape[:2]
            if height is None:
                raise ValueError(f"`pixels` must have shape (batch, height, width, 3) (RGB), got shape {pixels.shape}")
            raise ValueError(
                f"`pixels` must have shape (batch, {height}, {width}, 3): this TFLite model ({self.path}) "
                f"takes {height} x {width} images and the runtime cannot resize it; got shape "
                f"{pixels.shape}. Transform images with keras_cvt.transforms.evaluation_transform({height}, "
                "...), or export another input_size (None for any)"
            )
        if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
            raise TypeError(f"`pixels` must be numbers (RGB in [0, 255]), got dtype {pixels.dtype}")
        if len(pixels) == 0:
            return np.zeros([0, self.classes], np.float32)
        pixels = pixels.astype(np.float32)
        if self._one_at_a_time:
            return np.concatenate([self._run(pixels=image[None])["probabilities"] for image in pixels])
        return self._run(pixels=pixels)["probabilities"]


@contextlib.contextmanager
def _tflite_converter(model, quantization, input_size):
    """Yields the converter `export_tflite` uses, configured (builtin operators only)."""
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {TFLITE_QUANTIZATIONS}, got quantization={quantization!r}")
    classifier = Classifier(model)
    spec = classifier.pixels_spec(input_size)

    # The empty-batch guard of the SavedModel would become a control-flow op TFLite does not
    # need: the runtime fails an empty batch itself.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        SIGNATURE, lambda pixels: {"probabilities": classifier.file_probabilities(pixels)}, input_signature=[spec]
    )
    # Through a SavedModel, TFLite's standard route: the converter then freezes every Keras
    # variable into a constant (from a concrete function some stay TFLite resource variables
    # that nothing initialises).
    with tempfile.TemporaryDirectory() as directory:
        archive.write_out(directory, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=[SIGNATURE])
        # Select TF ops would need the Flex delegate, which most TFLite runtimes lack:
        # conversion fails instead of silently depending on it.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        yield converter
