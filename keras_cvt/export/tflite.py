"""TFLite files: pixels in, probabilities out, builtin operators only; and a runner for them."""

import contextlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_cvt import atomic
from keras_cvt.export.classifier import Classifier, float_pixels
from keras_cvt.pretrained import DEFAULT_TRANSFORM

TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_range")
# The signature the TFLite file is called through.
SIGNATURE = "serving_default"
# The largest smallest-size `TFLiteClassifier` looks for (CvT's default stem takes 3 x 3).
_MAX_MIN_SIZE = 1024


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

    This checks `pixels` against the height and width the file takes (any from the smallest its
    architecture allows, for a file exported with `input_size=None`), with an error that says
    what is expected, before the runtime sees them. Files of keras_cvt 0.2, whose batch is
    fixed at one image, are run one image at a time.

    Args:
        path: the `.tflite` file.
        num_threads: the interpreter's CPU threads (`None`: the runtime's default).

    Attributes:
        input_shape: `(height, width, 3)`, None for a dimension the file leaves free.
        min_size: the smallest height and width the file takes: the smallest its patch
            embeddings' kernels and strides leave a token of, found once by the runtime's own
            shape inference on the file's graph (None for a file of fixed size).
    """

    def __init__(self, path, num_threads=None):
        self.path = os.path.abspath(os.fspath(path))
        interpreter = _runtime().Interpreter(model_path=self.path, num_threads=num_threads)
        self._run = interpreter.get_signature_runner(SIGNATURE)
        shape = [int(d) for d in self._run.get_input_details()["pixels"]["shape_signature"]]
        self._one_at_a_time = shape[0] == 1
        self.input_shape = tuple(None if d < 0 else d for d in shape[1:])
        self.classes = int(self._run.get_output_details()["probabilities"]["shape"][-1])
        self.min_size = None if self.input_shape[0] is not None else _smallest_input(self.path)

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
        if self.min_size is not None and min(pixels.shape[1:3]) < self.min_size:
            raise ValueError(
                f"`pixels`[0] is {pixels.shape[1]} x {pixels.shape[2]} (height x width; every image of the "
                f"batch has that shape): this TFLite model ({self.path}) takes images of at least "
                f"{self.min_size} x {self.min_size}, the smallest its patch embeddings leave a token of"
            )
        pixels = float_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros([0, self.classes], np.float32)
        if self._one_at_a_time:
            return np.concatenate([self._run(pixels=image[None])["probabilities"] for image in pixels])
        return self._run(pixels=pixels)["probabilities"]


def _runtime():
    """The LiteRT interpreter module: ai_edge_litert's, else TensorFlow's own copy."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:  # TensorFlow's own copy of the runtime, deprecated in its favour
        return _TensorFlowRuntime
    return interpreter


class _TensorFlowRuntime:
    Interpreter = tf.lite.Interpreter
    OpResolverType = tf.lite.experimental.OpResolverType


def _smallest_input(path):
    """The smallest height and width that the free-size file at `path` can be run on, or None.

    The runtime runs one image of each size from 1 x 1 up (a few pixels: next to no work) until
    its shape inference through every convolution leaves a token: below the size the patch
    embeddings' kernels and strides allow, an operation's input is empty and preparing it
    fails. Without XNNPack, which would repack the weights for every try.
    """
    runtime = _runtime()
    interpreter = runtime.Interpreter(
        model_path=path, experimental_op_resolver_type=runtime.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    for size in range(1, _MAX_MIN_SIZE + 1):
        try:
            interpreter.get_signature_runner(SIGNATURE)(pixels=np.zeros([1, size, size, 3], np.float32))
        except RuntimeError:
            continue
        return size
    return None


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
        SIGNATURE, lambda pixels: {"probabilities": classifier.whole_score_probabilities(pixels)}, input_signature=[spec]
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
