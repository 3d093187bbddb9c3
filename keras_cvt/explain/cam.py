"""Class activation maps of the last block, where CvT's class token reads the image.

A CvT classifier reads the class token, and the class token reads the image's tokens only
through the last block's attention: its own row of attention probabilities over the keys,
which are projected (with the values and queries) from the block's *normalised* tokens
(`CvTBlock.normalised_tokens`, its `norm1`). The maps are taken there, on the last stage's
map (1/16 of the image). Not on the block's input map: LayerNorm gives the same output for a
token scaled by any factor, so each token's gradient there is orthogonal to the token, and
gradient times input vanishes but for LayerNorm's epsilon (tests/test_explain.py).

Which map (`CAM_METHODS`), measured on the digits of docs/explain.md ("Does it find the
object?"):
- `attention-gradient` (the default; after the per-layer relevance of Chefer, Gur and Wolf,
  "Generic Attention-model Explainability", ICCV 2021, in the last block): mean over heads
  of relu(a ⊙ (∂s/∂a - Σ_j a_j ∂s/∂a_j)), `a` the class token's attention probabilities
  over the keys: where the class token looks, kept where looking there more (and, as the
  softmax does, elsewhere less) raises the class's score. That is the gradient with respect
  to the class token's attention scores (before the softmax). Chefer's a ⊙ ∂s/∂a without
  the centring changes with where a constant of the values is kept: the folded inference
  form moves the values' constant into the output projection (the same outputs, since the
  probabilities sum to 1) and shifts every ∂s/∂a_j by the same amount; the centred form is
  the same for both. On the key grid (the key/value projection's stride), spread back over
  each key's window onto the map as the rollout does.
- `hirescam` (Draelos and Carin, 2020): relu(Σ_k A_k ∂s/∂A_k), each position's normalised
  tokens times their own gradient.
- `grad-cam` (Selvaraju et al., 2017): relu(Σ_k α_k A_k), α_k the spatial mean of channel
  k's gradient: the classic of convolutional networks; the mean discards the per-position
  weights the attention gave, and it finds the object far less often here.

What it costs: `keras_cvt.explain.capture` splits the model at the normalised tokens and the
class token's attention (an offset of zeros), so their gradients are input gradients of the
model's tail: one forward pass, and one backward pass through the last block and the head
only, on any backend.

Which score: the class's logit where the model returns logits; where its last layer is a
softmax, the log of the class's probability (the logit minus the log-sum-exp of all
logits), so a saturated softmax does not make the gradient vanish.
"""

import numpy as np
from keras import ops

CAM_METHODS = ("attention-gradient", "hirescam", "grad-cam")


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


def token_map(tokens, grid, with_cls_token):
    """Tokens `(batch, tokens, channels)` (the class token first where `with_cls_token`) as
    the map `(batch, height, width, channels)` of `grid` `(height, width)`."""
    tokens = np.asarray(tokens, dtype=np.float32)
    if with_cls_token:
        tokens = tokens[:, 1:]
    return tokens.reshape((tokens.shape[0], *grid, tokens.shape[-1]))


def token_cam(feature_map, gradient, method):
    """`hirescam`'s or `grad-cam`'s map `(batch, height, width)` of the map `A` `(batch,
    height, width, channels)` and the score's gradient with respect to it."""
    feature_map = np.asarray(feature_map, dtype=np.float32)
    gradient = np.asarray(gradient, dtype=np.float32)
    if method == "grad-cam":
        gradient = gradient.mean(axis=(1, 2), keepdims=True)
    return np.maximum((feature_map * gradient).sum(axis=-1), 0.0)


def attention_gradient(probabilities, gradient, key_grid):
    """`attention-gradient`'s map over the keys `(batch, key height, key width)`: the mean over
    heads of relu(a ⊙ (∂s/∂a - Σ_j a_j ∂s/∂a_j)), of the class token's attention probabilities
    `a` `(batch, heads, 1 + keys)` (its own key first, left out of the map) and the score's
    gradient with respect to them."""
    probabilities = np.asarray(probabilities, np.float64)
    gradient = np.asarray(gradient, np.float64)
    centred = gradient - (probabilities * gradient).sum(axis=-1, keepdims=True)
    relevance = np.maximum(probabilities * centred, 0.0)
    return relevance[:, :, 1:].mean(axis=1).reshape((-1, *key_grid))
