"""The attention weights of a CvT block, from the block's own layers, and their maps.

`ConvAttention` never materialises its probabilities where a caller could read them (and its
score computation may be chunked), so they are computed again from the block's input by
`CvTBlock.attention_weights`: the block's `norm1`, then the attention layer's own query and
key projections (those its forward pass runs, the query already scaled), then softmax(q kᵀ)
in float32. That is the part of a block's forward pass that produces the weights, nothing
more: no new weights, no change to the layers.
"""

import dataclasses

import numpy as np
from keras import ops

from keras_cvt.layers import conv_output_size


@dataclasses.dataclass(frozen=True)
class AttentionMap:
    """The attention weights of one block.

    Attributes:
        block: the block's layer name (`stage2_block9`).
        weights: `(batch, heads, queries, keys)` float32 probabilities; each query's row sums
            to 1. Queries and keys are the class token first where the stage carries one,
            then the map's tokens row by row. A folded last block that computes only the
            class token (`class_token_only`) has the class token's query only.
        query_grid: `(height, width)` of the queries' map (the block's input map).
        key_grid: `(height, width)` of the keys' map: the query map after the key/value
            projection's strided convolution.
        with_cls_token: whether the first query and the first key are the class token.
    """

    block: str
    weights: np.ndarray
    query_grid: tuple
    key_grid: tuple
    with_cls_token: bool


def block_attention(block, block_input):
    """The attention probabilities of `block` (a `CvTBlock`) on its input: `(batch, heads,
    queries, keys)` as a backend tensor. `block_input` is the block's input map, or `(map,
    class_token)` in the stage that carries the class token."""
    return block.attention_weights(block_input)


def attention_map(block, block_input):
    """`block_attention` as an `AttentionMap`, with its grids checked against the weights."""
    weights = ops.convert_to_numpy(block_attention(block, block_input))
    x_map = block_input[0] if block.with_cls_token else block_input
    height, width = (int(size) for size in ops.shape(x_map)[1:3])
    attention = block.attn
    key_grid = tuple(
        conv_output_size(size, attention.kernel_size, attention.kv_stride, attention.padding)
        for size in (height, width)
    )
    cls = int(block.with_cls_token)
    if weights.shape[3] != cls + key_grid[0] * key_grid[1]:
        raise AssertionError(f"{block.name}: {weights.shape[3]} keys, expected a {key_grid} grid")
    return AttentionMap(block.name, weights, (height, width), key_grid, bool(cls))


def query_index(record, query):
    """The row of `query` in `record.weights`: "cls" (the class token), or `(row, col)` of the
    query map."""
    if isinstance(query, str):
        if query != "cls":
            raise ValueError(f"`query` must be 'cls' or (row, col), got {query!r}")
        if not record.with_cls_token:
            raise ValueError(f"`query`='cls': block {record.block} has no class token")
        return 0
    try:
        row, col = (int(q) for q in query)
    except (TypeError, ValueError):
        raise ValueError(f"`query` must be 'cls' or (row, col), got {query!r}") from None
    height, width = record.query_grid
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"`query` {query!r} is outside block {record.block}'s {height}x{width} query map")
    if record.weights.shape[2] == int(record.with_cls_token):
        raise ValueError(f"block {record.block} computes only the class token's query (a folded last block)")
    return int(record.with_cls_token) + row * width + col


def query_map(record, query="cls", image_size=None):
    """The weights of one query over the key map, averaged over heads: `(batch, key height,
    key width)`, or resampled (bilinear) to `image_size` `(height, width)`. The class token's
    own key, where there is one, is left out (its weight is `record.weights[:, :, q, 0]`)."""
    weights = record.weights[:, :, query_index(record, query), int(record.with_cls_token) :].mean(axis=1)
    maps = weights.reshape((-1, *record.key_grid))
    if image_size is None:
        return maps
    return resize(maps, image_size)


def resize(maps, size):
    """`(batch, h, w)` maps resampled bilinearly to `size`, as numpy."""
    resized = ops.image.resize(ops.convert_to_tensor(maps[..., None]), tuple(size), data_format="channels_last")
    return ops.convert_to_numpy(resized)[..., 0]
