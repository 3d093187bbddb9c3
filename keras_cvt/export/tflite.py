"""TFLite files: pixels in, probabilities out, builtin operators only; and a runner for them."""

import contextlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_cvt import atomic, preprocessing
from keras_cvt.export.classifier import Classifier
from keras_cvt.pretrained import DEFAULT_TRANSFORM

TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_range")
# The signature the TFLite file is called through.
SIGNATURE = "serving_default"


def export_tflite(model, path, quantization=None, input_size=DEFAULT_TRANSFORM.size):
    """Writes `model` as a TFLite file: pixels in, probabilities out.

    The TFLite model takes one image already transformed to `input_size` (input `pixels`,
    `float32`, shape `[1, input_size, input_size, 3]`, RGB in [0, 255]; see
    `keras_cvt.transforms.evaluation_transform`) and returns `[1, classes]` probabilities,
    with the normalisation and softmax in the model as in `export_for_serving`. It uses
    TFLite's builtin operators only (the depthwise convolutions become `DEPTHWISE_CONV_2D`),
    so it runs on the plain TFLite runtime, without the Flex (select TF ops) delegate.

    Run it with `TFLiteClassifier`, which checks the input's shape, or with its signature:
    `interpreter.get_signature_runner()(pixels=x)["probabilities"]`. The input size is fixed
    (the model's reshapes are static): the TFLite runtime cannot resize it, and a `pixels` of
    another shape fails inside the runtime with a message that names neither (such as
    "XNNPack delegate failed to reshape runtimeNode number 181").

    Args:
        model: a CvT classifier, as for `export_for_serving`.
        path: the `.tflite` file to write; it is written beside and renamed into place, so an
            existing file is replaced whole.
        quantization: `None` (float32), `"float16"` (float16 weights, about half the size) or
            `"dynamic_range"` (int8 weights, about a quarter of the size, int8 matmuls where the
            runtime has them). Both change the probabilities slightly; check the accuracy you
            need on your data.
        input_size: the height and width of the input.

    Returns:
        The absolute path written.
    """
    with _tflite_converter(model, quantization, input_size) as converter:
        flatbuffer = converter.convert()
    return atomic.write_bytes(path, flatbuffer)


class TFLiteClassifier:
    """A file of `export_tflite` as a function: pixels `[batch, size, size, 3]` -> probabilities.

    The TFLite model takes one image of the size it was exported for; this checks `pixels`
    against it, with an error that says what is expected, before the runtime sees them, and
    runs the batch one image at a time.

    Args:
        path: the `.tflite` file.
        num_threads: the interpreter's CPU threads (`None`: the runtime's default).
    """

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy of the runtime, deprecated in its favour
            Interpreter = tf.lite.Interpreter
        self.path = os.path.abspath(os.fspath(path))
        interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self._run = interpreter.get_signature_runner(SIGNATURE)
        self.input_shape = tuple(int(d) for d in self._run.get_input_details()["pixels"]["shape"][1:])
        self.classes = int(self._run.get_output_details()["probabilities"]["shape"][-1])

    def __call__(self, pixels):
        """`pixels`: RGB in [0, 255], as `keras_cvt.transforms.evaluation_transform` makes them."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != self.input_shape:
            raise ValueError(
                f"`pixels` must have shape (batch, {', '.join(map(str, self.input_shape))}): this TFLite "
                f"model ({self.path}) takes {self.input_shape[0]} x {self.input_shape[1]} images and the "
                f"runtime cannot resize it; got shape {pixels.shape}. Transform images with "
                f"keras_cvt.transforms.evaluation_transform({self.input_shape[0]}, ...), or export "
                "another input_size"
            )
        if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
            raise TypeError(f"`pixels` must be numbers (RGB in [0, 255]), got dtype {pixels.dtype}")
        outputs = [self._run(pixels=image[None].astype(np.float32))["probabilities"] for image in pixels]
        return np.concatenate(outputs) if outputs else np.zeros([0, self.classes], np.float32)


@contextlib.contextmanager
def _tflite_converter(model, quantization, input_size):
    """Yields the converter `export_tflite` uses, configured (builtin operators only)."""
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {TFLITE_QUANTIZATIONS}, got quantization={quantization!r}")
    classifier = Classifier(model)
    if not isinstance(input_size, int) or input_size < classifier.min_size:
        raise ValueError(
            f"`input_size` must be an integer of at least {classifier.min_size}, got input_size={input_size!r}"
        )
    for axis, size in zip(("height", "width"), classifier.input_size):
        if size is not None and size != input_size:
            raise ValueError(f"`input_size`={input_size} does not fit the model's input {axis} {size}")

    # A fixed batch of one: the model's reshapes then have static shapes, which TFLite's
    # builtin RESHAPE and BATCH_MATMUL handle without dynamic-shape fallbacks. The empty-batch
    # guard of the SavedModel would become a control-flow op TFLite does not need.
    def predict(pixels):
        outputs = tf.cast(classifier.model(
            preprocessing.imagenet_normalize(pixels) if classifier.normalise else pixels, training=False
        ), tf.float32)
        return {"probabilities": tf.nn.softmax(outputs, axis=-1) if classifier.softmax else outputs}

    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        SIGNATURE,
        predict,
        input_signature=[tf.TensorSpec([1, input_size, input_size, 3], tf.float32, name="pixels")],
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
