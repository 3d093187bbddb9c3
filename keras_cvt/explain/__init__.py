"""What a CvT looks at: attention maps, attention rollout and class activation maps (HiResCAM,
Grad-CAM), as images.

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
from keras_cvt.explain.cam import CAM_METHODS, attention_gradient, class_score, token_cam, token_map
from keras_cvt.explain.capture import Capture, stages_of
from keras_cvt.explain.gradient import input_gradients
from keras_cvt.explain.rollout import Rollout, attention_rollout, spread

__all__ = [
    "AttentionMap",
    "CAM_METHODS",
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
        classes: `(batch,)` the class each class activation map explains (None without).
        attention: `{block name: AttentionMap}` for every block, in the order they run.
        rollout: the class token's `Rollout` to the pixels (None where the model has no
            class token).
        cam: `(batch, height, width)` the class activation map at the image's size, each
            scaled to [0, 1] (None without).
        cam_grid: the same before resampling, on the last stage's map, unscaled.
        cam_method: which map `cam` is (one of `CAM_METHODS`; None without).
    """

    outputs: np.ndarray
    classes: np.ndarray
    attention: dict
    rollout: Rollout
    cam: np.ndarray
    cam_grid: np.ndarray
    cam_method: str


def returns_probabilities(model):
    """Whether `model`'s last layer ends in a softmax (then the class activation maps
    differentiate the log of the probability, `keras_cvt.explain.cam`)."""
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

    def __call__(self, images, classes=None, cam="attention-gradient"):
        """Explains `images`.

        Args:
            images: `(batch, height, width, channels)`, as the model takes them.
            classes: `(batch,)` class indices the class activation maps explain; each
                image's top class where None.
            cam: which class activation map (one of `CAM_METHODS`, `keras_cvt.explain.cam`),
                or None for attention only (one forward pass, no gradient); a model whose
                outputs are not class scores (a backbone) needs None.
        Returns:
            An `Explanation`.
        """
        if cam is not None and cam not in CAM_METHODS:
            raise ValueError(f"`cam` must be one of {CAM_METHODS} or None, got {cam!r}")
        images = _check_images(images, self.model)
        batch, image_size = images.shape[0], images.shape[1:3]
        if classes is not None:
            classes = _check_classes(classes, batch)
        tail = self.capture.tail
        if cam and len(tail.outputs[0].shape) != 2:
            raise ValueError(
                f"`cam`={cam!r} needs a model that outputs class scores (batch, classes), got "
                f"outputs of shape {tuple(tail.outputs[0].shape)}: pass cam=None"
            )
        last = self.capture.last_block
        if cam == "attention-gradient" and not last.with_cls_token:
            raise ValueError(f"`cam`={cam!r} needs a class token in the last block ({last.name} has none)")
        block_inputs = self.capture.block_inputs(images)
        attention = {block.name: attention_map(block, value) for block, value in block_inputs.items()}
        record = attention[last.name]
        tail_inputs = self.capture.tail_inputs(block_inputs, record.weights.shape[3])
        probes = self.capture.probe_indices
        if cam:
            score = lambda outputs: class_score(outputs, classes, self.probabilities)  # noqa: E731
            outputs, gradients = input_gradients(tail, tail_inputs, probes, score)
        else:
            outputs = tail(tail_inputs, training=False)
        outputs = keras.ops.convert_to_numpy(outputs)
        rollout = None
        if last.with_cls_token:
            rollout = attention_rollout(self.stages, attention, image_size)
        cam_map = cam_grid = None
        if cam:
            if classes is None:
                classes = outputs.argmax(axis=1)
            gradients = [keras.ops.convert_to_numpy(gradient) for gradient in gradients]
            cam_grid = _cam_grid(cam, last, record, keras.ops.convert_to_numpy(tail_inputs[probes[0]]), gradients)
            cam_map = _unit_scale(resize(cam_grid, image_size))
        return Explanation(outputs, classes, attention, rollout, cam_map, cam_grid, cam)


def _cam_grid(cam, block, record, normalised, gradients):
    """`cam`'s map on the last block's query grid, from its `AttentionMap` `record`, its
    normalised tokens and the score's gradients with respect to them and (where `block` has
    a class token) to the class token's attention."""
    if cam == "attention-gradient":
        keys = attention_gradient(record.weights[:, :, 0], gradients[1][:, :, 0], record.key_grid)
        attn = block.attn
        return spread(keys, record.query_grid, attn.kernel_size, attn.kv_stride, attn.padding).astype(np.float32)
    tokens = token_map(normalised, record.query_grid, block.with_cls_token)
    return token_cam(tokens, token_map(gradients[0], record.query_grid, block.with_cls_token), cam)


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
