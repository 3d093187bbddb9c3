"""keras_cvt.explain: attention weights, rollout and class activation maps, on the tiny original-code model
(perturbed BatchNorm statistics and biases, so every part of the projections shows)."""

import dataclasses

import numpy as np
import pytest

from tests.conftest import TINY_CONFIG
from tests.test_layers import _np_batch_norm, _np_dense, _np_depthwise, _np_softmax

ARCHITECTURE = {key: value for key, value in TINY_CONFIG.items() if key != "classes"}


@pytest.fixture(scope="module")
def tiny(tiny_reference):
    import keras_cvt

    weights, x, _ = tiny_reference
    model = keras_cvt.CvT(
        **TINY_CONFIG, weights=str(weights), input_shape=(None, None, 3), include_preprocessing=False,
        classifier_activation=None,
    )
    return model, x


@pytest.fixture(scope="module")
def tiny_explained(tiny):
    from keras_cvt import explain

    model, x = tiny
    return explain.Explainer(model)(x)


def by_hand(attention, tokens_map, cls_token):
    """softmax(q kᵀ · dim^-½) from the layer's weights: conv, BatchNorm (inference), Linear, in
    numpy (tests/test_layers.py's reference of the original's operations)."""
    heads = []
    for name, stride in (("q", attention.q_stride), ("k", attention.kv_stride)):
        conv = getattr(attention, f"conv_proj_{name}").get_weights()[0].astype("float64")
        y = _np_depthwise(tokens_map, conv, stride, attention.padding)
        y = _np_batch_norm(y, getattr(attention, f"conv_proj_{name}_bn"))
        y = y.reshape((y.shape[0], -1, y.shape[3]))
        if cls_token is not None:
            y = np.concatenate([cls_token, y], axis=1)
        y = _np_dense(y, getattr(attention, f"proj_{name}"))
        heads.append(y.reshape((y.shape[0], y.shape[1], attention.num_heads, -1)).transpose(0, 2, 1, 3))
    q, k = heads
    return _np_softmax(q @ k.transpose(0, 1, 3, 2) * attention.dim**-0.5)


def test_attention_weights_are_the_layers_softmax_of_q_and_k(tiny, tiny_explained):
    import keras

    model, x = tiny
    for block_name in ("stage0_block0", "stage1_block1", "stage2_block1"):
        block = model.get_layer(block_name)
        inputs = keras.Model(model.input, block.input).predict(x, verbose=0)
        x_map = inputs[0] if block.with_cls_token else inputs
        tokens = x_map.reshape((x_map.shape[0], -1, block.dim))
        if block.with_cls_token:
            tokens = np.concatenate([inputs[1], tokens], axis=1)
        normed = block.norm1(tokens).numpy().astype(np.float64)
        cls_token = normed[:, :1] if block.with_cls_token else None
        tokens_map = normed[:, int(block.with_cls_token) :].reshape(x_map.shape)
        expected = by_hand(block.attn, tokens_map, cls_token)
        record = tiny_explained.attention[block_name]
        assert record.weights.shape == expected.shape
        np.testing.assert_allclose(record.weights, expected, atol=2e-6, rtol=0)
        np.testing.assert_allclose(record.weights.sum(axis=-1), 1.0, atol=1e-5)
        # The grids: keys at stride 2 of the queries' map, the class token first in the last stage.
        height, width = x_map.shape[1:3]
        assert record.query_grid == (height, width)
        assert record.key_grid == ((height + 1) // 2, (width + 1) // 2)
        assert record.with_cls_token == (block_name == "stage2_block1")


def test_the_outputs_are_the_models(tiny, tiny_explained):
    model, x = tiny
    np.testing.assert_allclose(tiny_explained.outputs, model.predict(x, verbose=0), atol=1e-5)
    assert list(tiny_explained.attention) == [
        "stage0_block0", "stage1_block0", "stage1_block1", "stage2_block0", "stage2_block1"
    ]


def _last_block_by_hand(model, x, classes):
    """The last block's input map and class token, its normalised tokens, and the gradient of
    the class score with respect to each, by hand: that block and the head run eagerly under
    a tape."""
    import keras
    import tensorflow as tf

    block = model.get_layer("stage2_block1")
    feature_map, cls_token = (tf.constant(t) for t in keras.Model(model.input, block.input).predict(x, verbose=0))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(feature_map)
        tokens = tf.concat([cls_token, tf.reshape(feature_map, (len(x), -1, block.dim))], axis=1)
        normalised = block.norm1(tokens)
        mean, variance = tf.nn.moments(tokens, axes=[-1], keepdims=True)
        assert np.allclose(normalised, (tokens - mean) / tf.sqrt(variance + block.norm1.epsilon) * block.norm1.gamma
                           + block.norm1.beta, atol=1e-5)
        _, cls_out = block([feature_map, cls_token], normalised=normalised)
        logits = model.get_layer("predictions")(model.get_layer("head_norm")(tf.reshape(cls_out, (len(x), -1))))
        score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    grid = tuple(feature_map.shape[1:3])
    as_map = lambda t: t.numpy()[:, 1:].reshape((len(x), *grid, block.dim))  # noqa: E731
    return (feature_map.numpy(), tape.gradient(score, feature_map).numpy(), as_map(normalised),
            as_map(tape.gradient(score, normalised)))


def test_attention_gradient_is_the_class_tokens_attention_times_its_gradient(tiny, tiny_explained):
    # By hand: the last block's class token, from its normalised tokens, with its attention
    # probabilities under the tape; then the block's MLP and the head.
    import keras
    import tensorflow as tf

    from keras_cvt import explain

    model, x = tiny
    found = tiny_explained
    assert found.cam_method == "attention-gradient"
    np.testing.assert_array_equal(found.classes, found.outputs.argmax(axis=1))
    block = model.get_layer("stage2_block1")
    feature_map, cls_token = keras.Model(model.input, block.input).predict(x, verbose=0)
    height, width = feature_map.shape[1:3]
    normalised = block.normalised_tokens([feature_map, cls_token])
    q, k, v = block.attn._split_qkv(normalised, height, width, False)
    probabilities = tf.nn.softmax(tf.matmul(q[:, :, :1], k, transpose_b=True), axis=-1)
    with tf.GradientTape() as tape:
        tape.watch(probabilities)
        heads = tf.transpose(tf.matmul(probabilities, v), (0, 2, 1, 3))
        cls_mid = cls_token + tf.reshape(block.attn.proj(tf.reshape(heads, (len(x), -1))), (len(x), 1, -1))
        cls_out = cls_mid + block._mlp(cls_mid)
        logits = model.get_layer("predictions")(model.get_layer("head_norm")(tf.reshape(cls_out, (len(x), -1))))
        score = tf.reduce_sum(tf.gather(logits, found.classes, axis=1, batch_dims=1))
    np.testing.assert_allclose(logits, found.outputs, atol=1e-4)
    gradient = tape.gradient(score, probabilities).numpy()[:, :, 0]
    # The gradient with respect to the scores: that of softmax's input.
    with tf.GradientTape() as tape:
        scores = tf.matmul(q[:, :, :1], k, transpose_b=True)
        tape.watch(scores)
        along = tf.reduce_sum(tf.nn.softmax(scores, axis=-1)[:, :, 0] * gradient)
    of_scores = tape.gradient(along, scores).numpy()[:, :, 0, 1:]
    key_grid = ((height + 1) // 2, (width + 1) // 2)
    keys = np.maximum(of_scores, 0).mean(axis=1).reshape((len(x), *key_grid))
    attn = block.attn
    expected = explain.spread(keys, (height, width), attn.kernel_size, attn.kv_stride, attn.padding)
    assert np.any(expected > 0)
    np.testing.assert_allclose(found.cam_grid, expected, rtol=1e-4, atol=1e-7)
    assert found.cam.shape == (len(x), *x.shape[1:3])
    assert found.cam.max() == pytest.approx(1.0) and found.cam.min() >= 0
    other = explain.Explainer(model)(x, classes=(found.classes + 1) % 10)
    assert not np.allclose(other.cam_grid, found.cam_grid)


@pytest.mark.parametrize("method", ["hirescam", "grad-cam"])
def test_class_activation_maps_are_the_gradient_weighted_normalised_tokens(tiny, method):
    from keras_cvt import explain

    model, x = tiny
    found = explain.Explainer(model)(x, cam=method)
    assert found.cam_method == method
    np.testing.assert_array_equal(found.classes, found.outputs.argmax(axis=1))
    _, _, tokens, gradient = _last_block_by_hand(model, x, found.classes)
    weights = gradient if method == "hirescam" else gradient.mean(axis=(1, 2), keepdims=True)
    expected = np.maximum((tokens * weights).sum(-1), 0)
    assert np.any(expected > 0)
    np.testing.assert_allclose(found.cam_grid, expected, rtol=1e-4, atol=1e-6)
    assert found.cam.shape == (len(x), *x.shape[1:3])
    assert found.cam.max() == pytest.approx(1.0) and found.cam.min() >= 0
    # Any class: the map of another class differs.
    other = explain.Explainer(model)(x, classes=(found.classes + 1) % 10, cam=method)
    assert not np.allclose(other.cam_grid, found.cam_grid)


def test_gradient_times_input_vanishes_on_the_blocks_input(tiny, tiny_explained):
    # Why the maps are taken on the normalised tokens: the block reads its input map only
    # through LayerNorm, which a token's scale does not change, so each token's gradient is
    # orthogonal to it (up to LayerNorm's epsilon); on the normalised tokens it is not.
    model, x = tiny
    feature_map, gradient, tokens, tokens_gradient = _last_block_by_hand(model, x, tiny_explained.classes)
    on_input = np.abs((feature_map * gradient).sum(-1))
    scale = np.linalg.norm(feature_map, axis=-1) * np.linalg.norm(gradient, axis=-1)
    assert on_input.max() < 1e-3 * scale.max()
    on_tokens = np.abs((tokens * tokens_gradient).sum(-1))
    assert on_tokens.max() > 0.05 * (np.linalg.norm(tokens, axis=-1) * np.linalg.norm(tokens_gradient, axis=-1)).max()


def test_the_normalised_tokens_are_what_the_block_reads(tiny):
    # `CvTBlock(..., normalised=normalised_tokens(...))` is the block's own call.
    import keras

    model, x = tiny
    for block_name in ("stage1_block1", "stage2_block1"):
        block = model.get_layer(block_name)
        inputs = keras.Model(model.input, block.input).predict(x, verbose=0)
        expected = block(inputs)
        found = block(inputs, normalised=block.normalised_tokens(inputs))
        for want, got in zip(keras.tree.flatten(expected), keras.tree.flatten(found)):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))


def test_rollout_of_identity_attention_is_the_identity(monkeypatch):
    # With 1x1 key/value projections at stride 1 and every attention the identity, a query's
    # rollout stays on its own token, and the class token's never leaves the class token.
    import keras
    import keras_cvt
    from keras_cvt import explain
    from keras_cvt.explain import attention

    model = keras_cvt.CvT(
        **ARCHITECTURE, classes=10, input_shape=(48, 64, 3), attention_kernel_size=1,
        attention_padding=0, kv_stride=1,
    )

    def identity(block, block_input):
        x_map = block_input[0] if block.with_cls_token else block_input
        tokens = int(block.with_cls_token) + x_map.shape[1] * x_map.shape[2]
        eye = np.broadcast_to(np.eye(tokens, dtype="float32"), (x_map.shape[0], block.num_heads, tokens, tokens))
        return keras.ops.convert_to_tensor(eye)

    monkeypatch.setattr(attention, "block_attention", identity)
    x = np.random.RandomState(0).uniform(0, 255, (2, 48, 64, 3)).astype("float32")
    explainer = explain.Explainer(model)
    found = explainer(x, cam=None)
    stages = explainer.stages
    last_grid = found.attention["stage2_block1"].query_grid
    assert last_grid == (3, 4)
    for row, col in ((0, 0), (1, 2), (2, 3)):
        rolled = explain.attention_rollout(stages, found.attention, x.shape[1:3], query=(row, col))
        expected = np.zeros((2, *last_grid))
        expected[:, row, col] = 1.0
        np.testing.assert_array_equal(rolled.stages[-1], expected)
        # Down the stages each embedding spreads its tokens over its window; only what falls
        # on the zero padding is lost, so an interior token keeps all of its weight.
        totals = [stage_map.sum(axis=(1, 2)) for stage_map in rolled.stages] + [rolled.image.sum(axis=(1, 2))]
        assert all(np.all((total > 0) & (total <= 1 + 1e-9)) for total in totals)
        if (row, col) == (1, 2):
            np.testing.assert_allclose(np.array(totals), 1.0)
    assert np.all(found.rollout.image == 0)  # the class token only ever attended to itself


def test_spread_splits_each_window_evenly():
    from keras_cvt import explain

    # One output of a 3x3, stride-2, padding-1 window at the corner: 4 of its 9 taps are in
    # the map, each with 1/9; the 5 on the padding are dropped.
    values = np.zeros((1, 2, 2))
    values[0, 0, 0] = 1.0
    out = explain.spread(values, (4, 4), 3, 2, 1)
    expected = np.zeros((1, 4, 4))
    expected[0, :2, :2] = 1 / 9
    np.testing.assert_allclose(out, expected)
    values[0, 1, 1] = 2.0  # a full window at (1..3, 1..3)
    out = explain.spread(values, (4, 4), 3, 2, 1)
    assert out.sum() == pytest.approx(4 / 9 + 2.0)
    assert out[0, 3, 3] == pytest.approx(2 / 9) and out[0, 1, 1] == pytest.approx(1 / 9 + 2 / 9)


def test_a_folded_model_explains_alike(tiny, tiny_explained):
    import keras_cvt
    from keras_cvt import explain

    model, x = tiny
    folded = explain.Explainer(keras_cvt.optimize_for_inference(model))(x)
    np.testing.assert_allclose(folded.outputs, tiny_explained.outputs, atol=1e-4)
    for name, record in tiny_explained.attention.items():
        other = folded.attention[name]
        # A folded last block computes the class token's query only.
        np.testing.assert_allclose(other.weights, record.weights[:, :, : other.weights.shape[2]], atol=1e-5)
    np.testing.assert_allclose(folded.rollout.image, tiny_explained.rollout.image, atol=1e-6)
    np.testing.assert_allclose(folded.cam, tiny_explained.cam, atol=1e-3)


def test_keras_hub_models_are_explained(tiny, tiny_explained):
    pytest.importorskip("keras_hub")
    from keras_cvt import explain
    from keras_cvt.keras_hub import CvTBackbone, CvTImageClassifier

    model, x = tiny
    backbone = CvTBackbone(**ARCHITECTURE)
    classifier = CvTImageClassifier(backbone, 10, activation=None)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    classifier.output_dense.set_weights(model.get_layer("predictions").get_weights())
    found = explain.Explainer(classifier)(x)
    np.testing.assert_allclose(found.outputs, tiny_explained.outputs, atol=1e-4)
    np.testing.assert_allclose(found.cam, tiny_explained.cam, atol=1e-3)
    features = explain.Explainer(backbone)(x, cam=None)
    assert features.cam is None and features.outputs.shape == (2, 48)
    np.testing.assert_allclose(features.rollout.image, tiny_explained.rollout.image, atol=1e-6)


def test_class_activation_maps_need_scores():
    import keras_cvt
    from keras_cvt import explain

    maps = keras_cvt.CvT(**ARCHITECTURE, include_top=False, input_shape=(None, None, 3))
    config = maps.get_config()
    x = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="needs a model that outputs class scores"):
        explain.Explainer(maps)(x)
    assert maps.get_config() == config  # splitting the graph left the model's own as it was
    assert explain.Explainer(maps)(x, cam=None).rollout.image.shape == (1, 32, 32)


def test_query_maps(tiny_explained):
    from keras_cvt import explain

    record = tiny_explained.attention["stage1_block0"]  # 8x10 queries, 4x5 keys
    grid = explain.query_map(record, (3, 5))
    assert grid.shape == (2, *record.key_grid)
    np.testing.assert_allclose(grid.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert explain.query_map(record, (3, 5), image_size=(64, 80)).shape == (2, 64, 80)
    last = tiny_explained.attention["stage2_block1"]
    cls = explain.query_map(last, "cls")
    np.testing.assert_allclose(cls.sum(axis=(1, 2)) + last.weights[:, :, 0, 0].mean(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "query, message",
    [
        ("token", "`query` must be 'cls' or \\(row, col\\)"),
        ((99, 0), "outside block stage1_block0's 8x10 query map"),
        ((1,), "`query` must be 'cls' or \\(row, col\\)"),
        ("cls", "has no class token"),
    ],
)
def test_bad_queries_are_refused(tiny_explained, query, message):
    from keras_cvt import explain

    with pytest.raises(ValueError, match=message):
        explain.query_map(tiny_explained.attention["stage1_block0"], query)


def test_bad_inputs_are_refused(tiny):
    import keras
    import keras_cvt

    from keras_cvt import explain

    model, x = tiny
    explainer = explain.Explainer(model)
    for images in (x[0], x[..., :2], np.zeros((0, 64, 80, 3)), np.full((1, 8, 8, 3), "a")):
        with pytest.raises(ValueError, match="`images` must"):
            explainer(images)
    for classes in ([1], [1.5, 2.0], [[1, 2]]):
        with pytest.raises(ValueError, match="`classes` must be 2 integer class indices"):
            explainer(x, classes=classes)
    for cam in ("gradcam", "Grad-CAM", 1, True, ["hirescam"]):
        with pytest.raises(ValueError, match=r"`cam` must be one of \('attention-gradient', 'hirescam', 'grad-cam'\)"):
            explainer(x, cam=cam)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises((TypeError, ValueError), match="`model`"):
        explain.Explainer(dense)
    image = keras.Input((8, 8, 3))
    plain = keras.Model(image, keras.layers.Conv2D(2, 3)(image))
    with pytest.raises(ValueError, match="holds no CvT blocks"):
        explain.Explainer(plain)

    class Subclassed(keras.Model):  # blocks, but no graph to split
        def __init__(self):
            super().__init__()
            self.embedding = keras_cvt.ConvEmbedding(16, 3, 2, 1)
            self.block = keras_cvt.CvTBlock(16, 1)

        def call(self, x):
            return self.block(self.embedding(x))

    subclassed = Subclassed()
    subclassed(x[:1])
    with pytest.raises(TypeError, match="`model` must be a functional keras.Model built by keras_cvt, got Subclassed"):
        explain.Explainer(subclassed)


EXPLAIN = __import__("tests.conftest", fromlist=["ROOT"]).ROOT / "examples" / "explain.py"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["attention-gradient", "rollout"])
def test_the_example_writes_overlays_of_the_photos(cvt13_reference, tmp_path, capsys, method):
    # Offline: the shipped photos and the original code's CvT-13 (converted; its labels are
    # those of perturbed weights, so only their form is checked).
    import importlib.util

    from keras_cvt import images

    pytest.importorskip("matplotlib")
    weights, _, _ = cvt13_reference
    spec = importlib.util.spec_from_file_location("explain_example", EXPLAIN)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    photos = sorted((EXPLAIN.parent / "images").glob("*.jpg"))
    out = tmp_path / "out"
    argv = [*map(str, photos), "--weights", str(weights), "--output", str(out), "--method", method, "--batch-size", "2"]
    assert example.main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "coffee.png", "grid.png", "rocket.png"]
    for photo in photos:
        assert images.load_image(str(out / f"{photo.stem}.png")).shape == (560, 480, 3)
    assert images.load_image(str(out / "grid.png")).shape == (340, 900, 3)
    for index, photo in enumerate(photos):
        assert f"[{index + 1}/3" in printed and f"{photo} -> {out / (photo.stem + '.png')}" in printed
    assert f"{method} of 3 images" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.jpg", "--output", "o"], "image file not found: missing.jpg"),
        (["x.jpg"], "the following arguments are required: --output"),
        (["x.jpg", "--output", "o", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["x.jpg", "--output", "o", "--method", "saliency"], "invalid choice: 'saliency'"),
    ],
)
def test_the_example_refuses_bad_arguments(argv, message, tmp_path, monkeypatch, capsys):
    import importlib.util

    monkeypatch.chdir(tmp_path)
    if "x.jpg" in argv:
        (tmp_path / "x.jpg").write_bytes(b"")
    spec = importlib.util.spec_from_file_location("explain_example", EXPLAIN)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with pytest.raises(SystemExit) as exit_info:
        example.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


CANVAS, DIGIT = 48, 16
DIGITS = tuple(range(10))
TRAINING, HELD_OUT, EPOCHS = 2000, 400, 10
# One stage, one block, keys at every position (kv_stride 1): the class token's attention is
# then on the 12x12 map itself, 4 pixels a cell (docs/explain.md, "Does it find the object?").
DIGITS_ARCHITECTURE = dict(
    depths=(1,), embed_dims=(48,), num_heads=(3,), patch_sizes=(7,), patch_strides=(4,), patch_paddings=(2,),
    kv_stride=1,
)


def pasted_digits(count, seed, distractor="shuffled"):
    """`count` canvases: a digit of `DIGITS` (16x16) at a uniformly random place and, apart
    from it, a distractor of the same size and ink: `"shuffled"`, a digit's pixels shuffled
    (the same ink, no strokes), or `"turned"`, the digit itself turned by 180 degrees (the
    same strokes too: what tells them apart is knowing digits). Returns (images, labels,
    the digits' top-left corners, the distractors')."""
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    rng = np.random.RandomState(seed)
    keep = np.flatnonzero(np.isin(digits.target, DIGITS))
    picked = keep[rng.randint(0, len(keep), count)]
    canvases = np.zeros((count, CANVAS, CANVAS), "float32")
    corners = rng.randint(0, CANVAS - DIGIT + 1, (count, 2))
    others = np.zeros_like(corners)
    for i, (row, col) in enumerate(corners):
        while True:  # the distractor anywhere it does not overlap the digit
            other_row, other_col = others[i] = rng.randint(0, CANVAS - DIGIT + 1, 2)
            if abs(row - other_row) >= DIGIT or abs(col - other_col) >= DIGIT:
                break
        digit = digits.images[picked[i]]
        canvases[i, row : row + DIGIT, col : col + DIGIT] = np.kron(digit, np.ones((2, 2)))
        if distractor == "turned":
            other = np.rot90(digit, 2)
        else:
            other = digits.images[rng.randint(len(digits.images))].ravel()[rng.permutation(64)].reshape(8, 8)
        canvases[i, other_row : other_row + DIGIT, other_col : other_col + DIGIT] = np.kron(other, np.ones((2, 2)))
    images = np.repeat(canvases[..., None] * (255 / 16), 3, axis=-1)
    return images, np.searchsorted(DIGITS, digits.target[picked]), corners, others


def peaks(maps):
    """Each map's highest pixel: (rows, cols)."""
    return np.unravel_index(maps.reshape((len(maps), -1)).argmax(axis=1), maps.shape[1:])


def in_box(maps, corners):
    """For each map, whether its highest pixel lies inside the box at `corners`."""
    rows, cols = peaks(maps)
    inside = (rows >= corners[:, 0]) & (rows < corners[:, 0] + DIGIT)
    return inside & (cols >= corners[:, 1]) & (cols < corners[:, 1] + DIGIT)


def peak_in_box(maps, corners):
    """The share of maps whose highest pixel lies inside the digit's box."""
    return float(np.mean(in_box(maps, corners)))


def chance_of_peaks(maps):
    """What maps whose peaks do not depend on where the digit is score, in expectation, and
    that expectation's standard deviation over `len(maps)` images: each peak (r, c) falls in
    the box of a digit placed as `pasted_digits` places it (corner uniform) with probability
    p = cover(r) cover(c), cover(x) the share of the corner's places whose box spans x. For a
    peak uniform over the canvas, p averages to the box's share of the canvas, 1/9; a map
    that prefers the middle (where more boxes reach) scores more, one that prefers the
    borders less: hence chance per peak, not 1/9."""
    places = CANVAS - DIGIT + 1

    def cover(x):
        return (np.minimum(x, places - 1) - np.maximum(x - DIGIT + 1, 0) + 1) / places

    rows, cols = peaks(maps)
    p = cover(rows) * cover(cols)
    return float(p.mean()), float(np.sqrt((p * (1 - p)).sum()) / len(p))


@dataclasses.dataclass
class DigitsExplained:
    """What `explain_before_and_after_training` found: `{class activation map method:
    Explanation}` of the model untrained (on `turned`, canvases whose distractor is the
    digit turned by 180 degrees) and trained (on `held_out`, canvases as it was trained on),
    each canvas set as `pasted_digits` returns it."""

    untrained: dict
    turned: tuple
    trained: dict
    held_out: tuple


def explain_before_and_after_training(seed=0):
    """A tiny CvT (initialised from `seed`), explained before and after `EPOCHS` epochs on
    `TRAINING` canvases: a `DigitsExplained`."""
    import keras
    import keras_cvt
    from keras_cvt import explain

    keras.utils.set_random_seed(seed)
    train_images, train_labels, _, _ = pasted_digits(TRAINING, 0)
    held_out = pasted_digits(HELD_OUT, 1)
    turned = pasted_digits(HELD_OUT, 1, distractor="turned")
    model = keras_cvt.CvT(
        **DIGITS_ARCHITECTURE, classes=len(DIGITS), input_shape=(CANVAS, CANVAS, 3), classifier_activation=None
    )
    explainer = explain.Explainer(model)
    untrained = {method: explainer(turned[0], cam=method) for method in explain.CAM_METHODS}
    model.compile(
        keras.optimizers.AdamW(3e-3, weight_decay=0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(train_images, train_labels, batch_size=64, epochs=EPOCHS, verbose=0)
    trained = {method: explainer(held_out[0], cam=method) for method in explain.CAM_METHODS}
    return DigitsExplained(untrained, turned, trained, held_out)


@pytest.fixture(scope="module")
def digits_explained():
    return explain_before_and_after_training()


@pytest.mark.slow
def test_untrained_maps_do_not_tell_the_digit_from_the_distractor(digits_explained):
    # An untrained CvT does not know digits: shown a digit and the same digit turned by 180
    # degrees (the same strokes and ink), its maps peak on the digit no more often than on
    # the turned copy. Of the n maps that peak on either, at most n/2 + 3 sqrt(n)/2 on the
    # digit (a binomial(n, 1/2) exceeds that 0.1% of the time). Measured (seeds 0, 1, 2;
    # docs/explain.md): attention-gradient 0.4675 / 0.465 / 0.44 on the digit against
    # 0.5175 / 0.53 / 0.5375 on the turned copy. Against the shuffled distractor of the
    # trained test the gradient maps of an untrained model do prefer the digit (0.64 against
    # 0.34, seed 0): random convolutions respond to strokes more than to scattered ink.
    _, _, corners, others = digits_explained.turned
    found = digits_explained.untrained
    maps = [found[method].cam for method in found] + [found["attention-gradient"].rollout.image]
    for map_ in maps:
        digit, distractor = int(in_box(map_, corners).sum()), int(in_box(map_, others).sum())
        assert digit <= (digit + distractor) / 2 + 3 * np.sqrt(digit + distractor) / 2, (digit, distractor)


@pytest.mark.slow
def test_trained_maps_find_the_digit(digits_explained):
    # Measured (seeds 0, 1, 2, these 400 held-out canvases; docs/explain.md): on the digit,
    # attention-gradient 0.9775 / 0.9525 / 0.9525 (on the distractor 0.0225 / 0.0425 /
    # 0.0475), rollout 0.985 / 0.985 / 0.9825, hirescam 0.89 / 0.9025 / 0.945, grad-cam
    # 0.6475 / 0.645 / 0.4875; top-1 0.86 / 0.82 / 0.7775. Issue 29 asks 0.9 of the class
    # activation map and of the rollout: each bound is the lowest run less 5 standard
    # deviations of the count (0.011 at 0.95, 0.007 at 0.98, 0.016 at 0.89, 0.025 at 0.49),
    # and each map at least 5 standard deviations above chance (chance_of_peaks).
    found = digits_explained.trained
    _, labels, corners, others = digits_explained.held_out
    assert np.mean(found["attention-gradient"].outputs.argmax(axis=1) == labels) >= 0.7
    rollout = found["attention-gradient"].rollout.image
    bounds = {"attention-gradient": 0.89, "rollout": 0.95, "hirescam": 0.8, "grad-cam": 0.35}
    maps = {**{method: found[method].cam for method in found}, "rollout": rollout}
    for name, map_ in maps.items():
        chance, deviation = chance_of_peaks(map_)
        on_digit = peak_in_box(map_, corners)
        assert on_digit >= bounds[name] and on_digit >= chance + 5 * deviation, (name, on_digit, chance, deviation)
    for name in ("attention-gradient", "rollout"):
        assert in_box(maps[name], corners).sum() >= 10 * in_box(maps[name], others).sum(), name


BACKEND_SCRIPT = """
import json, sys
import numpy as np
import keras_cvt
from keras_cvt import explain

weights, x_path, out = sys.argv[1:]
model = keras_cvt.CvT(depths=(1, 2, 2), embed_dims=(16, 32, 48), num_heads=(1, 2, 3), classes=10,
                      weights=weights, input_shape=(None, None, 3), include_preprocessing=False,
                      classifier_activation=None)
found = explain.Explainer(model)(np.load(x_path))
np.savez(out, outputs=found.outputs, cam_grid=found.cam_grid, rollout=found.rollout.image,
         last=found.attention["stage2_block1"].weights, classes=found.classes)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_explain_alike(backend, tiny, tiny_explained, tiny_reference, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, quick_jax_env

    weights, x, _ = tiny_reference
    np.save(tmp_path / "x.npy", x)
    env = quick_jax_env({**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)})
    result = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT, str(weights), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(found["outputs"], tiny_explained.outputs, atol=1e-4)
    np.testing.assert_array_equal(found["classes"], tiny_explained.classes)
    np.testing.assert_allclose(found["last"], tiny_explained.attention["stage2_block1"].weights, atol=1e-5)
    np.testing.assert_allclose(found["rollout"], tiny_explained.rollout.image, atol=1e-6)
    np.testing.assert_allclose(found["cam_grid"], tiny_explained.cam_grid, rtol=1e-3, atol=1e-5)
