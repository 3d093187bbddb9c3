"""Grad-CAM (Selvaraju et al., 2017) on the last map CvT's class token reads.

Which map: a CvT classifier reads the class token, and the class token reads the image's
tokens only through attention, whose keys and values in the last block come from that
block's *input* map. The last block's output map is read by nothing (its gradient is zero),
so Grad-CAM is taken on the input map of the last block: the finest-grained map the class
score still depends on, at the last stage's resolution (1/16 of the image).

What it costs: Grad-CAM weighs each channel by the spatial mean of the score's gradient.
`keras_cvt.explain.capture` adds a zero per-channel offset to that map, and the gradient
with respect to the offset is the gradient's spatial sum: one forward and one backward pass,
on any backend, with no per-position gradient kept.

Which score: the class's logit where the model returns logits; where its last layer is a
softmax, the log of the class's probability (the logit minus the log-sum-exp of all
logits), so a saturated softmax does not make the gradient vanish.
"""

import numpy as np
from keras import ops


def class_score(outputs, classes, probabilities):
    """The sum over the batch of each sample's score for its class in `classes` (each
    sample's top class where `classes` is None)."""
    outputs = ops.cast(outputs, "float32")
    if classes is None:
        indices = ops.expand_dims(ops.argmax(ops.stop_gradient(outputs), axis=1), 1)
    else:
        indices = ops.convert_to_tensor(np.asarray(classes)[:, None])
    picked = ops.take_along_axis(outputs, indices, axis=1)
    if probabilities:
        picked = ops.log(ops.maximum(picked, 1e-30))
    return ops.sum(picked)


def cam_from(feature_map, offset_gradient):
    """Grad-CAM's `(batch, height, width)` map: relu(Σ_k α_k A_k), α_k the spatial mean of the
    gradient of channel k (its sum, from the offset, over the map's size)."""
    feature_map = np.asarray(feature_map, dtype=np.float32)
    positions = feature_map.shape[1] * feature_map.shape[2]
    alpha = np.asarray(offset_gradient, dtype=np.float32).reshape((feature_map.shape[0], 1, 1, -1)) / positions
    return np.maximum((feature_map * alpha).sum(axis=-1), 0.0)
