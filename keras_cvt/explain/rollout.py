"""Attention rollout (Abnar & Zuidema, 2020) through CvT's strided keys and stage changes.

Rollout follows one output token back to the tokens it mixes, block by block: a block's output
token is half the attention's mix of its input tokens and half itself (the residual), so the
row vector `v` over a block's outputs becomes `v ← ½ (v A) U + ½ v` over its inputs, where `A`
is the attention averaged over heads. In a ViT the keys are the input tokens; in CvT they are
not, and that is what `U` and the stage steps handle:

- Keys and values are taken from the block's input map by a strided (2 by default)
  depthwise convolution: a key token at (i, j) is made from the input tokens in its window
  (3x3 around (2i, 2j)). `U` spreads each key's weight evenly over the 9 positions of its
  window and drops the share of those on the zero padding (zeros carry nothing; giving it
  to the positions inside would make borders hot). Evenly, because the depthwise
  kernels weigh each channel differently and no one channel-free weight exists; the window
  itself is exact. Without this, strided keys would have no place on the query grid, and
  a resize would misplace them by up to half a cell.
- The class token (last stage) has its own key: its weight stays on the class token. When
  the rollout leaves the stage where the class token enters, what is on it is dropped: the
  token starts as a learned constant that carries no image information. The mass that
  reaches the image is therefore below 1; it is the share of the query's information that
  comes from the image.
- Between stages, each token is a strided convolution (the next stage's token embedding) of
  a window of the previous stage's tokens (7x7 at stride 4 of the pixels for the first
  stage): its weight is spread evenly over that window, for the same reason as keys, down
  to the pixels. No resampling is involved: the result is exact at the image's resolution.

The query convolution (3x3, stride 1) is not followed: as in ViT rollout, a query token
stands for its own position.
"""

import dataclasses

import numpy as np

from keras_cvt.explain.attention import query_index
from keras_cvt.layers import conv_output_size


@dataclasses.dataclass(frozen=True)
class Rollout:
    """Attributes:
    image: `(batch, height, width)`: each pixel's share of the query's rollout.
    stages: one `(batch, height, width)` map per stage, over the input tokens of the stage's
        first block (the class token's share is not in it).
    """

    image: np.ndarray
    stages: tuple


def spread(values, in_size, kernel, stride, padding):
    """`values` `(batch, h, w)` over a convolution's outputs, each split evenly over the
    kernel² positions of its window, of which those on the zero padding are dropped: `(batch,
    in_height, in_width)`."""
    batch, out_h, out_w = values.shape
    rows, row_ok = _window(out_h, in_size[0], kernel, stride, padding)
    cols, col_ok = _window(out_w, in_size[1], kernel, stride, padding)
    # Each of the window's kernel² taps gets its share; the taps on the zero padding take
    # theirs away (zeros carry nothing). Sharing among the taps inside the map instead would
    # heap a border window's weight on its few pixels: hot borders and corners.
    share = values / kernel**2
    out = np.zeros((batch, *in_size), dtype=np.float64)
    for a in range(kernel):
        for b in range(kernel):
            r, c = row_ok[:, a], col_ok[:, b]
            # One tap of a stride >= 1 window: its positions are distinct, so += adds once each.
            out[:, rows[r, a][:, None], cols[c, b][None, :]] += share[:, r][:, :, c]
    return out


def _window(out_size, in_size, kernel, stride, padding):
    positions = np.arange(out_size)[:, None] * stride - padding + np.arange(kernel)[None, :]
    return positions, (positions >= 0) & (positions < in_size)


def grids(stages, image_size):
    """The token map size of each stage for an image of `image_size`."""
    sizes, size = [], tuple(image_size)
    for stage in stages:
        embedding = stage.embedding
        size = tuple(conv_output_size(s, embedding.kernel_size, embedding.strides, embedding.padding) for s in size)
        sizes.append(size)
    return sizes


def attention_rollout(stages, attention, image_size, query="cls"):
    """The rollout of `query` of the last block (`"cls"`, the class token, or `(row, col)` of
    the last stage's map) down to the image's pixels.

    Args:
        stages: the model's stages (`keras_cvt.explain.capture.stages_of`).
        attention: `{block name: AttentionMap}` of every block.
        image_size: `(height, width)` of the images the attention was computed on.
    Returns:
        A `Rollout`.
    """
    sizes = grids(stages, image_size)
    last = attention[stages[-1].blocks[-1].name]
    start = query_index(last, query)
    batch = last.weights.shape[0]
    tokens = int(last.with_cls_token) + last.query_grid[0] * last.query_grid[1]
    v = np.zeros((batch, tokens))
    v[:, start] = 1.0
    stage_maps = []
    for index in reversed(range(len(stages))):
        stage = stages[index]
        for block in reversed(stage.blocks):
            v = _through_block(v, attention[block.name], block)
        cls = int(stage.blocks[0].with_cls_token) if stage.blocks else 0
        v = v[:, cls:].reshape((batch, *sizes[index]))
        stage_maps.append(v)
        in_size = sizes[index - 1] if index else tuple(image_size)
        embedding = stage.embedding
        v = spread(v, in_size, embedding.kernel_size, embedding.strides, embedding.padding)
        if index:
            v = v.reshape((batch, -1))
    return Rollout(v, tuple(reversed(stage_maps)))


def _through_block(v, record, block):
    """`v` over the block's output tokens -> over its input tokens (the module docstring)."""
    weights = record.weights.astype(np.float64).mean(axis=1)
    queries = weights.shape[1]
    if queries < v.shape[1] and np.any(v[:, queries:]):
        raise ValueError(f"block {record.block} computes only the class token's query: roll out the class token")
    mixed = np.einsum("bq,bqk->bk", v[:, :queries], weights)
    cls = int(record.with_cls_token)
    attention = block.attn
    keys = spread(
        mixed[:, cls:].reshape((-1, *record.key_grid)),
        record.query_grid,
        attention.kernel_size,
        attention.kv_stride,
        attention.padding,
    ).reshape((v.shape[0], -1))
    return 0.5 * np.concatenate([mixed[:, :cls], keys], axis=1) + 0.5 * v
