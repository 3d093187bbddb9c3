"""Grad-CAM (Selvaraju et al., 2017) on the last map CvT's class token reads.

Which map: a CvT classifier reads the class token, and the class token reads the image's
tokens only through attention, whose keys and values in the last block come from that
block's *input* map. The last block's output map is read by nothing (its gradient is zero),
so Grad-CAM is taken on the input map of the last block: the finest-grained map the class
score still depends on, at the last stage's resolution (1/16 of the image).

What it costs: `keras_cvt.explain.capture` splits the model at that map, so its gradient is
the input gradient of the model's tail: one forward pass, and one backward pass through the
last block and the head only, on any backend.

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


def cam_from(feature_map, gradient):
    """Grad-CAM's `(batch, height, width)` map: relu(Σ_k α_k A_k) of the map `A` `(batch,
    height, width, channels)`, α_k the spatial mean of the score's gradient on channel k."""
    feature_map = np.asarray(feature_map, dtype=np.float32)
    alpha = np.asarray(gradient, dtype=np.float32).mean(axis=(1, 2), keepdims=True)
    return np.maximum((feature_map * alpha).sum(axis=-1), 0.0)
