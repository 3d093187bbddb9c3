"""`keras_cvt.attention`: the score matrix in blocks of query rows past a size, the same numbers
as whole (within 1e-5, relative), gradients too; the choice of path from the sizes."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cvt import CvT, CvT13, attention, optimize_for_inference
from keras_cvt.inference.frozen import freeze_for_inference
from tests.conftest import ROOT, TINY_CONFIG, quick_jax_env

# Relative to the largest magnitude of the output: the same operations on fewer rows.
TOLERANCE = 1e-5
# Limits that send every map through blocks of a few rows (with a ragged last block).
FORCE_BLOCKS = {"PLAIN_LIMIT_BYTES": 0, "BLOCK_BYTES": 2000}
FORCE_PLAIN = {"PLAIN_LIMIT_BYTES": 2**50}


def _limits(monkeypatch, limits):
    for name, value in limits.items():
        monkeypatch.setattr(attention, name, value)


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def _heads(batch, heads, queries, keys, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 0.3, (batch, heads, queries, head_dim)).astype("float32")
    k, v = (rng.normal(0, 1, (batch, heads, keys, head_dim)).astype("float32") for _ in range(2))
    return q, k, v


def _whole(q, k, v):
    """softmax(q k^T) v in float64, as the reference."""
    scores = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64))
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v.astype(np.float64)


# CvT-13's three stages (heads, queries, keys) at 224 pixels: the 224 path computes them whole.
CVT13_AT_224 = ((1, 56 * 56, 28 * 28), (3, 28 * 28, 14 * 14), (6, 14 * 14 + 1, 7 * 7 + 1))


def test_maps_up_to_288_pixels_are_computed_whole():
    for heads, queries, keys in CVT13_AT_224:
        assert attention.query_block_rows(heads, queries, keys) is None
    assert attention.query_block_rows(1, 72 * 72, 36 * 36) is None  # 288 pixels: 27 MB
    assert attention.query_block_rows(1, 80 * 80, 40 * 40) is not None  # 320 pixels: 41 MB


@pytest.mark.parametrize("pixels", [320, 1024, 2048, 4096])
def test_a_block_holds_at_most_block_bytes_per_image(pixels):
    heads, queries, keys = 1, (pixels // 4) ** 2, (pixels // 8) ** 2
    rows = attention.query_block_rows(heads, queries, keys)
    assert 1 <= rows < queries
    assert rows * keys * heads * attention.SCORE_BYTES <= attention.BLOCK_BYTES
    # and not needlessly fewer rows
    assert (rows + 1) * keys * heads * attention.SCORE_BYTES > attention.BLOCK_BYTES


def test_one_row_per_block_when_a_row_is_larger_than_a_block():
    assert attention.query_block_rows(1, 10**6, attention.BLOCK_BYTES) == 1


@pytest.mark.parametrize(
    "batch, heads, queries, keys, rows",
    [(2, 1, 97, 25, 8), (1, 3, 64, 16, 16), (2, 2, 33, 9, 1), (1, 1, 10, 4, 10), (3, 6, 50, 13, 7)],
)
def test_blocks_equal_the_whole_matrix(batch, heads, queries, keys, rows):
    q, k, v = _heads(batch, heads, queries, keys, 8)
    whole = keras.ops.convert_to_numpy(attention._plain(q, k, v, training=False))
    blocked = keras.ops.convert_to_numpy(attention._blocked(q, k, v, rows, training=False))
    assert blocked.shape == whole.shape == (batch, heads, queries, 8)
    assert _relative(blocked, whole) <= TOLERANCE
    assert _relative(whole, _whole(q, k, v)) <= TOLERANCE


def _ops(function, *specs):
    graph = tf.function(function).get_concrete_function(*specs).graph
    return {op.type for op in graph.get_operations()}


def test_small_fixed_sizes_make_the_graph_they_always_made():
    """An export of a fixed small size (any batch) gets no loop and no conditional."""
    q, k, v = (tf.TensorSpec((None, 1, n, 64), tf.float32) for n in (3136, 784, 784))
    ops = _ops(lambda q, k, v: attention.attention(q, k, v), q, k, v)
    assert ops.isdisjoint({"While", "StatelessWhile", "If", "StatelessIf"})
    assert {"BatchMatMulV2", "Softmax"} <= ops


def test_large_fixed_sizes_loop_without_a_conditional():
    q, k, v = (tf.TensorSpec((None, 1, n, 64), tf.float32) for n in (256 * 256, 128 * 128, 128 * 128))
    ops = _ops(lambda q, k, v: attention.attention(q, k, v), q, k, v)
    assert ops & {"While", "StatelessWhile"} and ops.isdisjoint({"If", "StatelessIf"})


def test_free_sizes_choose_at_run_time(monkeypatch):
    """A graph of any size holds both paths; each size runs the one its own sizes pick."""
    monkeypatch.setattr(attention, "PLAIN_LIMIT_BYTES", 4 * 40 * 10)  # 40 queries x 10 keys
    monkeypatch.setattr(attention, "BLOCK_BYTES", 4 * 3 * 10)  # 3 rows of 10 keys
    spec = tf.TensorSpec((None, 2, None, 8), tf.float32)
    function = tf.function(lambda q, k, v: attention.attention(q, k, v))
    concrete = function.get_concrete_function(spec, spec, spec)
    assert {op.type for op in concrete.graph.get_operations()} & {"If", "StatelessIf"}
    for queries in (40, 41, 97):  # whole, then blocks (ragged)
        q, k, v = _heads(2, 2, queries, 10, 8, seed=queries)
        out = concrete(q, k, v).numpy()
        assert out.shape == (2, 2, queries, 8)
        assert _relative(out, _whole(q, k, v)) <= TOLERANCE


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_gradients_of_blocks_equal_the_whole_matrix(compiled):
    q, k, v = (tf.constant(a) for a in _heads(2, 2, 45, 12, 8))
    upstream = tf.constant(np.random.default_rng(1).normal(size=(2, 2, 45, 8)).astype("float32"))

    def gradients(path):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(path(q, k, v) * upstream)
        return tape.gradient(loss, [q, k, v])

    whole = lambda q, k, v: attention._plain(q, k, v, training=True)  # noqa: E731
    blocked = lambda q, k, v: attention._blocked(q, k, v, 4, training=True)  # noqa: E731
    if compiled:
        run = tf.function(gradients)
        expected, got = run(whole), run(blocked)
    else:
        expected, got = gradients(whole), gradients(blocked)
    for e, g in zip(expected, got):
        assert _relative(g, e) <= TOLERANCE


def _backbone_outputs(model, x):
    return [keras.ops.convert_to_numpy(o) for o in model(x, training=False)]


@pytest.fixture(scope="module")
def tiny_weights(tiny_reference):
    path, _, _ = tiny_reference
    return path


# Odd sizes, not square, ragged last blocks.
ODD_IMAGES = np.random.default_rng(3).normal(size=(2, 75, 107, 3)).astype("float32")


def _tiny_classifier(weights):
    return CvT(**TINY_CONFIG, weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
               classifier_activation=None)


def _compare(monkeypatch, run, together=False):
    """`run()` (a list of arrays) with every attention whole, then in blocks; checks them alike,
    each array relative to its own largest value, or with `together` to the largest of all."""
    _limits(monkeypatch, FORCE_PLAIN)
    whole = run()
    _limits(monkeypatch, FORCE_BLOCKS)
    blocked = run()
    assert [w.shape for w in whole] == [b.shape for b in blocked]
    if together:
        whole, blocked = [np.concatenate([a.ravel() for a in arrays]) for arrays in (whole, blocked)]
        whole, blocked = [whole], [blocked]
    for w, b in zip(whole, blocked):
        assert _relative(b, w) <= TOLERANCE


def test_classifier_logits_training_and_folded_forms(monkeypatch, tiny_weights):
    def run():
        # Fresh each time: a call with training=True moves the BatchNorms' statistics.
        model = _tiny_classifier(tiny_weights)
        folded = optimize_for_inference(model)
        return [
            keras.ops.convert_to_numpy(model(ODD_IMAGES, training=False)),
            model.predict(ODD_IMAGES, verbose=0),  # a graph traced for these sizes
            keras.ops.convert_to_numpy(model(ODD_IMAGES, training=True)),
            keras.ops.convert_to_numpy(folded(ODD_IMAGES, training=False)),
        ]

    _compare(monkeypatch, run)


def test_frozen_graph_of_any_size(monkeypatch, tiny_weights):
    folded = optimize_for_inference(_tiny_classifier(tiny_weights))
    _compare(monkeypatch, lambda: [freeze_for_inference(folded)(ODD_IMAGES).numpy()])


def _pyramid(model):
    """The three stage maps of `model` (built with include_top=False) as a model's outputs."""
    return keras.Model(model.input, [model.get_layer(f"stage{i}_output").output for i in range(3)])


def test_stage_maps(monkeypatch, tiny_weights):
    pyramid = _pyramid(
        CvT(**TINY_CONFIG, weights=tiny_weights, input_shape=(None, None, 3), include_preprocessing=False,
            include_top=False)
    )
    _compare(monkeypatch, lambda: _backbone_outputs(pyramid, ODD_IMAGES))


def test_training_step_gradients(monkeypatch, tiny_weights):
    """The gradients of every weight of a training step (BatchNorm on batch statistics)."""

    def run():
        model = _tiny_classifier(tiny_weights)
        labels = np.array([3, 7])
        with tf.GradientTape() as tape:
            logits = model(ODD_IMAGES, training=True)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
        return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    # Together: some gradients are rounding noise around zero (the key projection's bias, which
    # adds one constant to each row of scores, has none), whose own scale means nothing.
    _compare(monkeypatch, run, together=True)


@pytest.mark.slow  # CvT-13 at 2 x 141 x 203, twice each way: tens of seconds on two cores
def test_cvt13_logits_and_stage_maps(monkeypatch, cvt13_reference):
    path, _, _ = cvt13_reference
    classifier = CvT13(weights=path, input_shape=(None, None, 3), include_preprocessing=False,
                       classifier_activation=None)
    pyramid = _pyramid(CvT13(weights=path, input_shape=(None, None, 3), include_preprocessing=False,
                             include_top=False))
    x = np.random.default_rng(5).normal(size=(2, 141, 203, 3)).astype("float32")
    _compare(monkeypatch, lambda: [classifier.predict(x, verbose=0)] + _backbone_outputs(pyramid, x))


BACKEND_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, keras
    from keras_cvt import attention
    rng = np.random.default_rng(0)
    q = rng.normal(0, 0.3, (2, 2, 45, 8)).astype("float32")
    k, v = (rng.normal(0, 1, (2, 2, 12, 8)).astype("float32") for _ in range(2))
    upstream = rng.normal(size=(2, 2, 45, 8)).astype("float32")
    backend = keras.backend.backend()

    def grads(path):
        if backend == "jax":
            import jax
            f = lambda q, k, v: (path(q, k, v) * upstream).sum()
            return [np.asarray(g) for g in jax.grad(f, argnums=(0, 1, 2))(q, k, v)]
        import torch
        ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
        (path(*ts) * torch.tensor(upstream)).sum().backward()
        return [t.grad.numpy() for t in ts]

    for training in (False, True):
        whole = keras.ops.convert_to_numpy(attention._plain(q, k, v, training))
        blocked = keras.ops.convert_to_numpy(attention._blocked(q, k, v, 4, training))
        print("forward", training, np.abs(blocked - whole).max() / np.abs(whole).max())
    for w, b in zip(grads(lambda q, k, v: attention._plain(q, k, v, True)),
                    grads(lambda q, k, v: attention._blocked(q, k, v, 4, True))):
        print("gradient", np.abs(b - w).max() / np.abs(w).max())
    from keras_cvt import CvT
    MODEL = CvT(**json.loads(sys.argv[2]), weights=sys.argv[1], input_shape=(None, None, 3), include_preprocessing=False,
                classifier_activation=None)
    attention.PLAIN_LIMIT_BYTES, attention.BLOCK_BYTES = 0, 2000
    x = rng.normal(size=(1, 75, 107, 3)).astype("float32")
    blocked = keras.ops.convert_to_numpy(MODEL(x))
    attention.PLAIN_LIMIT_BYTES = 2**50
    whole = keras.ops.convert_to_numpy(MODEL(x))
    print("model", np.abs(blocked - whole).max() / np.abs(whole).max())
    """
)


@pytest.mark.slow  # a subprocess per backend: tens of seconds each
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_other_backends(backend, tiny_weights):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
    if backend == "jax":
        env = quick_jax_env(env)
    result = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT, str(tiny_weights), json.dumps(TINY_CONFIG)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["forward"], ["gradient"], ["model"])]
    assert [line[0] for line in lines] == ["forward", "forward", "gradient", "gradient", "gradient", "model"]
    for line in lines:
        assert float(line[-1]) <= TOLERANCE, line
