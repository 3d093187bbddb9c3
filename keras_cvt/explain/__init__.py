"""What a CvT looks at: attention maps, attention rollout and Grad-CAM, as images.

    explainer = keras_cvt.explain.Explainer(model)   # once per model
    found = explainer(images)                        # one forward and one backward pass
    found.cam, found.rollout.image, found.attention["stage2_block9"]

`model` is any model keras_cvt builds (`CvT13`, `CvT`, `from_hf`, a fine-tuned or folded one,
`CvTBackbone`, `CvTImageClassifier`); it is used as it is (its own layers and weights). See
docs/explain.md.
"""

import dataclasses

import keras
import numpy as np

from keras_cvt.explain.attention import AttentionMap, attention_map, block_attention, query_map, resize
from keras_cvt.explain.cam import cam_from, class_score
from keras_cvt.explain.capture import Capture, stages_of
from keras_cvt.explain.gradient import input_gradient
from keras_cvt.explain.rollout import Rollout, attention_rollout, spread

__all__ = [
    "AttentionMap",
    "Explainer",
    "Explanation",
    "Rollout",
    "attention_rollout",
    "block_attention",
    "query_map",
    "spread",
    "stages_of",
]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What one call of an `Explainer` found for a batch of images.

    Attributes:
        outputs: the model's outputs `(batch, ...)` (probabilities, logits or features).
        classes: `(batch,)` the class each Grad-CAM map explains (None without Grad-CAM).
        attention: `{block name: AttentionMap}` for every block, in the order they run.
        rollout: the class token's `Rollout` to the pixels (None where the model has no
            class token).
        cam: `(batch, height, width)` Grad-CAM at the image's size, each scaled to [0, 1]
            (None without Grad-CAM).
        cam_grid: the same before resampling, on the last stage's map, unscaled.
    """

    outputs: np.ndarray
    classes: np.ndarray
    attention: dict
    rollout: Rollout
    cam: np.ndarray
    cam_grid: np.ndarray


def returns_probabilities(model):
    """Whether `model`'s last layer ends in a softmax (then Grad-CAM differentiates the log of
    the probability, `keras_cvt.explain.cam`)."""
    layer = model.layers[-1]
    while isinstance(layer, keras.Model):
        layer = layer.layers[-1]
    activation = getattr(layer, "activation", None)
    return activation is not None and keras.activations.serialize(activation) == "softmax"


class Explainer:
    """Explains a CvT's predictions; built once per model (it splits the model's graph at its
    last block, see `keras_cvt.explain.capture`), then called on batches of images.

    Args:
        model: a functional model built by keras_cvt, used as it is.
    """

    def __init__(self, model):
        self.capture = Capture(model)
        self.model = model
        self.stages = self.capture.stages
        self.probabilities = returns_probabilities(model)

    def __call__(self, images, classes=None, grad_cam=True):
        """Explains `images`.

        Args:
            images: `(batch, height, width, channels)`, as the model takes them.
            classes: `(batch,)` class indices Grad-CAM explains; each image's top class where
                None.
            grad_cam: False for attention only (one forward pass, no gradient); a model whose
                outputs are not class scores (a backbone) needs False.
        Returns:
            An `Explanation`.
        """
        images = _check_images(images, self.model)
        batch, image_size = images.shape[0], images.shape[1:3]
        if classes is not None:
            classes = _check_classes(classes, batch)
        tail = self.capture.tail
        if grad_cam and len(tail.outputs[0].shape) != 2:
            raise ValueError(
                "`grad_cam`=True needs a model that outputs class scores (batch, classes), got "
                f"outputs of shape {tuple(tail.outputs[0].shape)}: pass grad_cam=False"
            )
        block_inputs = self.capture.block_inputs(images)
        tail_inputs = self.capture.tail_inputs(block_inputs)
        if grad_cam:
            outputs, gradient = input_gradient(
                tail, tail_inputs, 0, lambda outputs: class_score(outputs, classes, self.probabilities)
            )
        else:
            outputs = tail(tail_inputs if len(tail_inputs) > 1 else tail_inputs[0], training=False)
        outputs = keras.ops.convert_to_numpy(outputs)
        attention = {block.name: attention_map(block, value) for block, value in block_inputs.items()}
        last = self.capture.last_block
        rollout = None
        if last.with_cls_token:
            rollout = attention_rollout(self.stages, attention, image_size)
        cam = cam_grid = None
        if grad_cam:
            if classes is None:
                classes = outputs.argmax(axis=1)
            cam_grid = cam_from(keras.ops.convert_to_numpy(tail_inputs[0]), keras.ops.convert_to_numpy(gradient))
            cam = _unit_scale(resize(cam_grid, image_size))
        return Explanation(outputs, classes, attention, rollout, cam, cam_grid)


def _unit_scale(maps):
    peak = maps.reshape((maps.shape[0], -1)).max(axis=1)
    return np.where(peak[:, None, None] > 0, maps / np.where(peak > 0, peak, 1)[:, None, None], 0.0)


def _check_images(images, model):
    array = np.asarray(images)
    channels = model.inputs[0].shape[-1]
    if array.ndim != 4 or array.shape[0] < 1 or (channels is not None and array.shape[3] != channels):
        raise ValueError(
            f"`images` must be a non-empty batch (batch, height, width, {channels}), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"`images` must hold numbers, got dtype {array.dtype}")
    return array.astype("float32")


def _check_classes(classes, batch):
    array = np.asarray(classes)
    if array.shape != (batch,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`classes` must be {batch} integer class indices, one per image, got {classes!r}")
    return array.astype("int32")
