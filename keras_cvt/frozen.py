"""A model as one TensorFlow function with its weights baked in as graph constants.

`freeze_for_inference(model)` traces `model(x, training=False)` once and turns every variable
it reads into a constant of the graph. TensorFlow then treats the weights as what they are at
inference, constants: no variable reads per call, and its graph optimizer and oneDNN kernels
may specialise to them. It should pay most at small batches, where weights outweigh
activations: timed in turns in one process on the benchmark machine, the folded CvT-13 answered
batch-1 calls 5-9% sooner frozen; the full benchmark (`benchmarks/bench.py`, "frozen" rows) has
seen it both faster and slower, within that machine's run-to-run noise.

The frozen function is TensorFlow-only and inference-only: it holds copies of the weights at
freezing time (later changes to the model do not reach it), and cannot be trained. Freeze the
output of `keras_cvt.optimize_for_inference` for the fastest float32 or bfloat16 path.
"""

import keras
import tensorflow as tf

# TensorFlow 2 has no public freezing function; its TFLite converter freezes with this one.
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


class FrozenFunction:
    """`model(x, training=False)` as a TensorFlow graph with the weights as constants.

    Call it on a batch (a tensor or NumPy array of the model's input shape; float32 when the
    model takes floats, also for a bfloat16 or float16 model); it returns what the model
    returns, as TensorFlow tensors.

    Attributes:
        input_signature: the `tf.TensorSpec` it takes (batch size None: any batch).
        graph_def: the frozen `GraphDef`.
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
        self._function = convert_variables_to_constants_v2(concrete)
        self.graph_def = self._function.graph.as_graph_def()

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
        batch_size: None for any batch size, or the one batch size the function takes.

    Returns:
        A `FrozenFunction`: `frozen(images)` equals `model(images, training=False)`.
    """
    return FrozenFunction(model, batch_size=batch_size)
