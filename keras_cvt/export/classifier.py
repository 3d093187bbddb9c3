"""What every export wraps: a CvT classifier as a function from RGB pixels in [0, 255] to
probabilities, whatever its preprocessing and activation, in its folded inference form; and the
label strings of its classes."""

import keras
import numpy as np
import tensorflow as tf

from keras_cvt import attention, inference, preprocessing
from keras_cvt.layers import ConvEmbedding, conv_output_size


class Classifier:
    """`model` as a function from [0, 255] pixels to probabilities, whatever its preprocessing."""

    def __init__(self, model):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "The exports trace the model with TensorFlow: run with "
                f"KERAS_BACKEND=tensorflow (the backend is {keras.backend.backend()!r})"
            )
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError("`model` must have one image input and one output (a CvT classifier)")
        input_shape, output_shape = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
        if len(input_shape) != 4 or input_shape[-1] != 3:
            raise ValueError(f"`model` must take RGB images (batch, height, width, 3), its input is {input_shape}")
        # The classifier is what makes scores of the output; pooled features are rank 2 too.
        classifier = model.layers[-1]
        if not isinstance(classifier, keras.layers.Dense) or len(output_shape) != 2:
            raise ValueError(
                "`model` must end with its classifier, a Dense layer with output (batch, classes); its "
                f"output is {output_shape} from a {type(classifier).__name__} layer: build it with "
                "include_top=True"
            )
        # include_preprocessing=True puts the normalisation first, as a layer whose mean and
        # variance are eager tensors: a traced function captures them as inputs, which ONNX then
        # has as two more required inputs. The rest of the model is exported, and the
        # normalisation done with graph constants (`probabilities`); the same numbers. Without
        # that layer the model expects what the original PyTorch model expected (normalised
        # input), which clients should not compute.
        first = model.layers[1] if len(model.layers) > 1 else None
        if isinstance(first, keras.layers.Normalization) and first.name == "preprocessing":
            model = keras.Model(first.output, model.output, name=model.name)
        # BatchNorm, the attention scale and QuickGELU's factor folded into the weights: the same
        # outputs with fewer operations in every exported graph.
        self.model = inference.optimize_for_inference(model) if inference.is_foldable(model) else model
        self.classes = int(output_shape[-1])
        self.input_size = input_shape[1:3]
        self.softmax = classifier.activation is keras.activations.linear
        self.min_size = min_input_size(model)

    def probabilities(self, pixels):
        """Probabilities (float32, `[batch, classes]`) of `pixels`, RGB in [0, 255] of any number
        dtype; the batch must not be empty (the convolutions refuse one)."""
        normalised = preprocessing.imagenet_normalize(tf.cast(pixels, tf.float32))
        outputs = tf.cast(self.model(normalised, training=False), tf.float32)
        return tf.nn.softmax(outputs, axis=-1) if self.softmax else outputs

    def whole_score_probabilities(self, pixels):
        """`probabilities` with every attention score matrix computed whole
        (`keras_cvt.attention.whole_scores`), for the OpenVINO and LiteRT files. OpenVINO's
        converter fuses each whole attention into its ScaledDotProductAttention, which the CPU
        plugin computes at bounded memory itself (CvT-13 at 768 pixels: +0.12 GB, against
        +0.26 GB with our loop; docs/memory.md). LiteRT's converter cannot lower the loop over
        blocks while the batch is free ("failed to legalize operation 'tf.TensorListReserve'"),
        and the blocks as static slices peaked as high as the whole matrices in LiteRT (+1.42 GB
        at 768 both). ONNX files keep the blocks (ONNX Runtime runs the loop: +0.16 GB against
        +2.71 GB whole)."""
        with attention.whole_scores():
            return self.probabilities(pixels)

    def __call__(self, pixels):
        pixels = tf.cast(pixels, tf.float32)
        # The convolutions reject an empty batch with a confusing shape error, and an empty
        # request deserves an empty answer.
        return tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: self.probabilities(pixels),
            lambda: tf.zeros([0, self.classes], tf.float32),
        )

    def pixels_spec(self, input_size):
        """The `pixels` input of a file format: float32 `[batch, input_size, input_size, 3]`,
        any batch; any height and width (down to `min_size`) for `input_size=None`.

        Raises ValueError for a size below `min_size` or one the model's input does not take.
        """
        if input_size is None:
            fixed = [size for size in self.input_size if size is not None]
            if fixed:
                raise ValueError(
                    "`input_size`=None exports any height and width, but the model takes only "
                    f"{self.input_size[0]} x {self.input_size[1]} images: pass that input_size, or "
                    "build the model with input_shape=(None, None, 3)"
                )
        elif isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < self.min_size:
            raise ValueError(
                f"`input_size` must be None or an integer of at least {self.min_size}, got input_size={input_size!r}"
            )
        else:
            for axis, size in zip(("height", "width"), self.input_size):
                if size is not None and size != input_size:
                    raise ValueError(f"`input_size`={input_size} does not fit the model's input {axis} {size}")
        return tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="pixels")


def float_pixels(pixels):
    """`pixels` (a numpy array of any number dtype) as float32, as the exported files take them;
    TypeError for anything else (strings, objects)."""
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise TypeError(f"`pixels` must be numbers (RGB in [0, 255]), got dtype {pixels.dtype}")
    return pixels.astype(np.float32)


def min_input_size(model):
    """The smallest height and width from which the token embeddings leave a token."""
    embeddings = [layer for layer in model.layers if isinstance(layer, ConvEmbedding)]
    size = 1
    while True:
        remaining = size
        for layer in embeddings:
            remaining = conv_output_size(remaining, layer.kernel_size, layer.strides, layer.padding)
        if remaining >= 1:
            return size
        size += 1


def label_strings(labels, classes):
    if labels is None:
        if classes == len(preprocessing.imagenet_classes()):
            return imagenet_labels()
        return [str(i) for i in range(classes)]
    if isinstance(labels, str):
        if labels != "imagenet":
            raise ValueError(f"`labels` must be None, 'imagenet' or a list of strings, got labels={labels!r}")
        if classes != len(preprocessing.imagenet_classes()):
            raise ValueError(f"`labels`='imagenet' needs a classifier with 1000 classes, the model has {classes}")
        return imagenet_labels()
    labels = list(labels)
    if len(labels) != classes or not all(isinstance(label, str) for label in labels):
        raise ValueError(
            f"`labels` must hold one string per class ({classes}), got {len(labels)} "
            f"items of types {sorted({type(label).__name__ for label in labels})}"
        )
    return labels


def imagenet_labels():
    # The names decode_predictions returns, so served and in-process results read the same.
    return [names.split(",")[0].replace(" ", "_") for _, names in preprocessing.imagenet_classes()]
