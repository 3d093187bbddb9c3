"""softmax(q k^T) v at a memory that grows with the number of tokens, not with its square.

The score matrix of one image has heads x queries x keys entries: in CvT's first stage
(queries = (H/4)(W/4), keys a quarter of that) 65,536 x 16,384 floats, 4.3 GB, at 1024 pixels,
and 16 times that at 2048. Each row of it is only ever reduced on its own, so past
`PLAIN_LIMIT_BYTES` per image `attention` computes it a block of query rows at a time, each block
the same operations on fewer rows as the whole matrix would be (so the same numbers, row for row),
and keeps only the block's output. A block holds at most `BLOCK_BYTES` of scores (of the whole
batch: its rows are one image's block shared among the images).

Blocks of keys (with a running softmax) do not pay here: the keys, strided by 2 in each
direction, are a quarter of the queries, so one row of scores is 64 KB at 1024 pixels and
256 KB at 2048, and a block of whole rows keeps the matmuls large. Nor does the backends' fused
attention (`keras.ops.dot_product_attention`): on TensorFlow and on JAX's CPU it computes the
whole matrix itself.

Training (`training=True`) recomputes each block's scores in the backward pass
(`keras.remat`: `tf.recompute_grad`, `jax.checkpoint`, `torch.utils.checkpoint`) instead of
keeping every block's softmax for it, which would be the whole matrix again.

The choice is made from the sizes of one image (so exports of a fixed size get one path, and
a batch of small images never loops): when they are known as the graph is made (eagerly, under
JAX, and in exports of a fixed size) it is made once in Python, and small maps (224 pixels) run
exactly the operations they always did; when they are known only at run time (a TensorFlow
graph of any image size) a conditional picks one of the two at run time.
"""

import contextlib
import contextvars
import functools

import keras
from keras import ops

# Bytes of one score, at most: training computes the scores in float32 (as float16 inference
# does), and float32 inference does too.
SCORE_BYTES = 4
# The largest score matrix of one image (all heads) computed whole. CvT's first stage reaches it
# between 288 pixels (27 MB) and 320 (40 MB); at 224 (10 MB) nothing changes. Past it, blocks
# were as fast or faster on two cores (a smaller working set), see `docs/memory.md`.
PLAIN_LIMIT_BYTES = 32 * 2**20
# The scores of one block of query rows, of the whole batch. TensorFlow graphs run up to 10
# iterations of a loop at once, so up to 10 blocks are held. Measured on CvT-13's first
# stage at 1024 pixels (two cores, 32 MB of L3; docs/memory.md): blocks of 4.5 to 7 MB took the
# least CPU time, 0.75x that of 8 MB blocks (and of the whole matrix); 16 and 32 MB 1.4 to 2x.
BLOCK_BYTES = 6 * 2**20
# Set by `whole_scores`.
_WHOLE = contextvars.ContextVar("keras_cvt_whole_scores", default=False)


@contextlib.contextmanager
def whole_scores():
    """Within it, `attention` computes every score matrix whole, as keras_cvt did before it had
    blocks (graphs traced inside keep that): the reference the blocks are held to, and the graph
    of the OpenVINO and LiteRT files (see `keras_cvt.export.classifier`)."""
    token = _WHOLE.set(True)
    try:
        yield
    finally:
        _WHOLE.reset(token)


def attention(q, k, v, training=False):
    """softmax(q k^T) v of heads `(batch, heads, tokens, head_dim)`, q already scaled.

    Args:
        q: queries `(batch, heads, queries, head_dim)`.
        k: keys `(batch, heads, keys, head_dim)`.
        v: values `(batch, heads, keys, head_dim)`.
        training: scores and softmax in float32 (as for float16), and, where the matrix is
            computed in blocks, each block recomputed in the backward pass.

    Returns:
        `(batch, heads, queries, head_dim)`, in `v`'s dtype.
    """
    if _WHOLE.get():
        return _plain(q, k, v, training)
    heads, queries, keys = q.shape[1], q.shape[2], k.shape[2]
    if queries is not None and keys is not None:
        rows = query_block_rows(heads, queries, keys)
        if rows is None:
            return _plain(q, k, v, training)
        return _blocked(q, k, v, _per_batch(rows, ops.shape(q)[0]), training)
    queries, keys = ops.shape(q)[2], ops.shape(k)[2]
    per_key = SCORE_BYTES * heads * keys
    # queries * per_key <= limit, without the product (which overflows int32 past 1 GB).
    return ops.cond(
        queries <= PLAIN_LIMIT_BYTES // per_key,
        lambda: _plain(q, k, v, training),
        lambda: _blocked(q, k, v, _per_batch(ops.maximum(BLOCK_BYTES // per_key, 1), ops.shape(q)[0]), training),
    )


def _per_batch(rows, batch):
    """The rows of a block of the whole batch: `rows` (one image's block) shared among its
    images, so a block's scores stay within `BLOCK_BYTES` whatever the batch (at 384 pixels
    and a batch of 8, 0.86x the CPU time of blocks of one image's rows for each image). An int
    where the batch is known as the graph is made, else a scalar tensor."""
    if isinstance(batch, int) and isinstance(rows, int):
        return max(rows // batch, 1)
    return ops.maximum(rows // batch, 1)


def query_block_rows(heads, queries, keys):
    """How many query rows `attention` computes at a time, for maps whose sizes are known:
    None for all of them at once (a score matrix of at most `PLAIN_LIMIT_BYTES` per image)."""
    per_key = SCORE_BYTES * heads * keys
    if queries * per_key <= PLAIN_LIMIT_BYTES:
        return None
    return min(max(BLOCK_BYTES // per_key, 1), queries)


def _plain(q, k, v, training):
    scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
    if training or keras.backend.standardize_dtype(scores.dtype) == "float16":
        # float16 scores can overflow, and training wants float32 softmax gradients. For
        # bfloat16 inference (float32's range) the two casts of the attention matrix would
        # cost more than the softmax itself.
        scores = ops.cast(scores, "float32")
    weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
    return ops.matmul(weights, v)


def _blocked(q, k, v, rows, training):
    """`_plain` a block of `rows` query rows at a time (`rows` an int, or a scalar tensor)."""
    heads, head_dim = q.shape[1], q.shape[3]
    queries = ops.shape(q)[2]
    blocks = (queries + rows - 1) // rows
    padding = blocks * rows - queries
    if not isinstance(padding, int) or padding:
        # Zero rows, whose outputs are cut off below.
        q = ops.pad(q, [[0, 0], [0, 0], [0, padding], [0, 0]])
    # -> (blocks, batch, heads, rows, head_dim): `ops.map` runs over the first axis.
    q = ops.transpose(ops.reshape(q, (-1, heads, blocks, rows, head_dim)), (2, 0, 1, 3, 4))
    block = functools.partial(_plain, training=training)
    if training:
        block = keras.remat(block)
    out = ops.map(lambda q_block: block(q_block, k, v), q)
    out = ops.reshape(ops.transpose(out, (1, 2, 0, 3, 4)), (-1, heads, blocks * rows, v.shape[3]))
    return out[:, :, :queries]
