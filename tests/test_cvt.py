"""The model builders, in the manner of keras' own applications tests."""

import keras
import numpy as np
import pytest

import keras_cvt
from keras_cvt import MODEL_CONFIGS, CvT, CvT13
from keras_cvt.architectures import VARIANTS
from keras_cvt.layers import CvTBlock
from tests.conftest import TINY_CONFIG

TINY_BACKBONE = {k: v for k, v in TINY_CONFIG.items() if k != "classes"}
CVT13_PARAMS = 20_023_208
PARAMS = {"cvt13": CVT13_PARAMS, "cvt21": 31_664_552, "cvtw24": 277_330_792}


def expected_params(
    depths, embed_dims, classes=1000, channels=3, patch_sizes=(7, 3, 3), mlp_ratio=4.0, include_top=True
):
    """Parameter count of a CvT from its architecture, independently of the builder."""
    total, in_channels = 0, channels
    for depth, dim, kernel in zip(depths, embed_dims, patch_sizes):
        hidden = int(dim * mlp_ratio)
        total += kernel * kernel * in_channels * dim + dim + 2 * dim  # conv embedding + LayerNorm
        # q, k, v: depthwise 3x3 (no bias), BatchNorm (4 vectors), Linear; then the output Linear.
        attention = 3 * (9 * dim + 4 * dim + dim * dim + dim) + dim * dim + dim
        mlp = dim * hidden + hidden + hidden * dim + dim
        total += depth * (2 * dim + attention + 2 * dim + mlp)
        in_channels = dim
    total += embed_dims[-1]  # class token
    if include_top:
        total += 2 * embed_dims[-1] + embed_dims[-1] * classes + classes
    return total


def stage_sizes(size, strides=(4, 2, 2), kernels=(7, 3, 3), paddings=(2, 1, 1)):
    """Spatial size after each stage (PyTorch's conv arithmetic)."""
    sizes = []
    for kernel, stride, padding in zip(kernels, strides, paddings):
        size = (size + 2 * padding - kernel) // stride + 1
        sizes.append(size)
    return sizes


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def cvt13():
    """CvT13 with every default argument (built once for this module)."""
    return CvT13()


@pytest.fixture(scope="module")
def cvt13_backbone():
    """CvT13(include_top=False) at variable input size (built once for this module)."""
    return CvT13(include_top=False)


# ---------------------------------------------------------------------------------------------
# Shapes and arguments, as keras.applications tests them
# ---------------------------------------------------------------------------------------------


def test_default_input_shape_with_top(cvt13):
    assert cvt13.input_shape == (None, 224, 224, 3)
    assert cvt13.output_shape == (None, 1000)
    assert cvt13.name == "cvt13"
    assert cvt13.get_layer("predictions").activation.__name__ == "softmax"
    assert cvt13.count_params() == CVT13_PARAMS == expected_params((1, 2, 10), (64, 192, 384))


def test_notop_default_input_is_variable(cvt13_backbone):
    assert cvt13_backbone.input_shape == (None, None, None, 3)
    assert cvt13_backbone.output_shape == (None, None, None, 384)
    assert cvt13_backbone.count_params() == expected_params((1, 2, 10), (64, 192, 384), include_top=False)
    out = _np(cvt13_backbone(np.zeros((1, 64, 96, 3), "float32")))
    assert out.shape == (1, 4, 6, 384)


@pytest.mark.parametrize("pooling", ["avg", "max", "token"])
def test_pooling_shapes(pooling):
    model = CvT13(include_top=False, pooling=pooling)
    assert model.input_shape == (None, None, None, 3)
    assert model.output_shape == (None, 384)


def test_pooling_values():
    """avg/max pool the last map; token is the class token after the final LayerNorm."""
    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 80, 3)).astype("float32")
    maps = CvT(**TINY_BACKBONE, include_top=False)
    stage_map = _np(maps(x))
    assert stage_map.shape == (2, 4, 5, 48)
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        pooled = CvT(**TINY_BACKBONE, include_top=False, pooling=pooling)
        pooled.set_weights(maps.get_weights())
        np.testing.assert_allclose(_np(pooled(x)), reduce(stage_map, axis=(1, 2)), atol=1e-5)
    token = CvT(**TINY_BACKBONE, include_top=False, pooling="token")
    full = CvT(**TINY_CONFIG, input_shape=(None, None, 3))
    token.set_weights(full.get_weights()[: len(token.weights)])
    features = keras.Model(full.input, full.get_layer("head_norm").output)
    assert len(token.weights) == len(full.weights) - 2  # all but the Dense classifier
    np.testing.assert_allclose(_np(token(x)), _np(features(x)), atol=1e-6)


def test_custom_input_shape():
    model = CvT13(include_top=False, input_shape=(123, 123, 3))
    assert stage_sizes(123) == [31, 16, 8]
    assert model.output_shape == (None, 8, 8, 384)
    model = CvT13(input_shape=(160, 192, 3))
    assert model.input_shape == (None, 160, 192, 3)
    assert model.output_shape == (None, 1000)


def test_input_tensor_keras_input():
    image = keras.Input((200, 200, 3), name="my_image")
    model = CvT13(include_top=False, input_tensor=image)
    assert model.input is image
    assert model.output_shape == (None, 13, 13, 384)


def test_input_tensor_after_another_layer_keeps_the_source_input():
    image = keras.Input((200, 200, 4), name="custom_input")
    resized = keras.layers.Conv2D(3, 2, strides=2, name="to_rgb")(image)
    model = CvT(**TINY_BACKBONE, include_top=False, input_tensor=resized)
    assert model.input is image
    assert model.input_shape == (None, 200, 200, 4)
    assert "to_rgb" in [layer.name for layer in model.layers]
    assert model.output_shape == (None, 7, 7, 48)  # 200 -> 100 by to_rgb, then /16 (7)
    assert _np(model(np.zeros((1, 200, 200, 4), "float32"))).shape == (1, 7, 7, 48)


@pytest.mark.parametrize("tensor", [np.zeros((1, 64, 64, 3), "float32"), "images"])
def test_input_tensor_must_be_a_keras_tensor(tensor):
    with pytest.raises(TypeError, match="`input_tensor` must be a Keras tensor"):
        CvT(**TINY_CONFIG, input_tensor=tensor)


@pytest.mark.parametrize("channels", [1, 4])
def test_variable_input_channels_without_weights(channels):
    model = CvT13(include_top=False, input_shape=(None, None, channels), include_preprocessing=False)
    assert model.output_shape == (None, None, None, 384)
    assert tuple(model.get_layer("stage0_embedding").proj.kernel.shape) == (7, 7, channels, 64)
    out = _np(model(np.zeros((1, 48, 48, channels), "float32")))
    assert out.shape == (1, 3, 3, 384)


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_skip_the_builtin_normalisation(channels):
    """As keras' models do: include_preprocessing=True (the default) cannot normalise other
    than RGB input, so the model takes it as it is, and says so."""
    with pytest.warns(
        UserWarning, match=f"`include_preprocessing=True` normalises RGB images .* has {channels} channels"
    ):
        model = CvT(**TINY_CONFIG, input_shape=(32, 32, channels))
    assert "preprocessing" not in [layer.name for layer in model.layers]
    plain = CvT(**TINY_CONFIG, input_shape=(32, 32, channels), include_preprocessing=False)
    plain.set_weights(model.get_weights())
    x = np.random.RandomState(0).uniform(0, 255, (1, 32, 32, channels)).astype("float32")
    np.testing.assert_allclose(_np(model(x)), _np(plain(x)), atol=1e-6)


def test_classifier_activation(tiny_reference):
    path, x, logits = tiny_reference
    kwargs = dict(TINY_CONFIG, weights=path, input_shape=(None, None, 3), include_preprocessing=False)
    raw = _np(CvT(**kwargs, classifier_activation=None)(x))
    np.testing.assert_allclose(raw, logits, atol=1e-4)
    assert np.all(np.abs(raw.sum(-1) - 1.0) > 0.1)
    model = CvT(**kwargs)
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    probs = _np(model(x))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, _np(keras.ops.softmax(raw)), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Any input size; feature maps
# ---------------------------------------------------------------------------------------------


def test_dynamic_input_size_with_top(cvt13):
    model = CvT13(input_shape=(None, None, 3))
    assert model.input_shape == (None, None, None, 3)
    assert model.output_shape == (None, 1000)
    model.set_weights(cvt13.get_weights())
    rng = np.random.RandomState(0)
    for height, width in ((224, 224), (160, 192), (97, 131)):
        x = rng.uniform(0, 255, (1, height, width, 3)).astype("float32")
        probs = _np(model(x))
        assert probs.shape == (1, 1000)
        assert np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
        if height == 224:  # same weights, same numbers as the fixed-size model
            np.testing.assert_allclose(probs, _np(cvt13(x)), atol=1e-6)


def test_stage_outputs_at_strides_4_8_16():
    model = CvT13(include_top=False, input_shape=(224, 224, 3))
    expected = [(None, 56, 56, 64), (None, 28, 28, 192), (None, 14, 14, 384)]
    assert [tuple(model.get_layer(f"stage{i}_output").output.shape) for i in range(3)] == expected
    assert model.output_shape == expected[-1]


def test_stage_outputs_of_the_classifier_model(cvt13):
    """As documented: with the classifier, which reads only the class token, the last map is
    not part of the model (nothing uses it); the stride-4 and stride-8 maps are."""
    assert [tuple(cvt13.get_layer(f"stage{i}_output").output.shape) for i in range(2)] == [
        (None, 56, 56, 64),
        (None, 28, 28, 192),
    ]
    with pytest.raises(ValueError, match="No such layer: stage2_output"):
        cvt13.get_layer("stage2_output")


def test_feature_pyramid(cvt13_backbone):
    model = cvt13_backbone
    pyramid = keras.Model(model.input, [model.get_layer(f"stage{i}_output").output for i in range(3)])
    assert [tuple(t.shape) for t in pyramid.outputs] == [
        (None, None, None, 64),
        (None, None, None, 192),
        (None, None, None, 384),
    ]
    x = np.random.RandomState(0).uniform(0, 255, (2, 97, 131, 3)).astype("float32")
    maps = [_np(m) for m in pyramid(x)]
    heights, widths = stage_sizes(97), stage_sizes(131)
    assert (heights, widths) == ([24, 12, 6], [33, 17, 9])
    assert [m.shape for m in maps] == [(2, h, w, c) for h, w, c in zip(heights, widths, (64, 192, 384))]
    np.testing.assert_allclose(maps[-1], _np(model(x)), atol=1e-6)


@pytest.mark.parametrize("size, tokens", [(3, 1), (18, 1), (19, 2)])
def test_smallest_inputs(size, tokens):
    model = CvT(**TINY_CONFIG, input_shape=(size, size, 3))
    assert stage_sizes(size)[-1] == tokens
    assert model.get_layer("stage2_block1").output[0].shape[1:3] == (tokens, tokens)
    out = _np(model(np.full((1, size, size, 3), 128.0, "float32")))
    assert out.shape == (1, 10) and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Variants: parameter counts and stochastic depth
# ---------------------------------------------------------------------------------------------


def _drop_path_rates(model):
    rates = {}
    for layer in model.layers:
        if layer.name.startswith("stage") and "_block" in layer.name:
            assert layer.drop_path.rate == pytest.approx(layer.drop_path_rate)
            rates[layer.name] = layer.drop_path_rate
    return rates


def _expected_rates(depths, rate):
    last = len(depths) - 1
    return {
        f"stage{i}_block{j}": (rate * j / (depths[i] - 1) if i == last else 0.0)
        for i in range(len(depths))
        for j in range(depths[i])
    }


def test_cvt13_drop_path_rates(cvt13):
    rates = _drop_path_rates(cvt13)
    assert rates == pytest.approx(_expected_rates((1, 2, 10), 0.1))
    assert rates["stage2_block0"] == 0.0 and rates["stage2_block9"] == pytest.approx(0.1)
    assert rates["stage1_block1"] == 0.0


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=[pytest.mark.slow] if v.name == "cvtw24" else []) for v in VARIANTS.values()],
    ids=list(VARIANTS),
)
def test_each_builder_builds_its_record(variant):
    """The builder of each `architectures.Variant` builds that architecture, at a small input."""
    model = getattr(keras_cvt, variant.builder)(weights=None, input_shape=(32, 32, 3))
    blocks = {layer.name: layer for layer in model.layers if isinstance(layer, CvTBlock)}
    last = len(variant.depths) - 1
    assert sorted(blocks) == sorted(_expected_rates(variant.depths, 0.0))
    for i, (depth, dim, heads) in enumerate(zip(variant.depths, variant.embed_dims, variant.num_heads)):
        assert model.get_layer(f"stage{i}_embedding").embed_dim == dim
        stage = [blocks[f"stage{i}_block{j}"] for j in range(depth)]
        assert {(b.dim, b.num_heads, b.mlp_ratio, b.with_cls_token) for b in stage} == {(dim, heads, 4.0, i == last)}
    assert _drop_path_rates(model) == pytest.approx(_expected_rates(variant.depths, variant.drop_path_rate))
    assert model.output_shape == (None, 1000)
    count = model.count_params()
    assert count == PARAMS[variant.name] == expected_params(variant.depths, variant.embed_dims)
    # The model zoos' count, truncated to 0.1M (BatchNorm statistics included).
    assert int(count / 1e5) / 10 == variant.published_params
    assert MODEL_CONFIGS[variant.name] == {**variant.config, "drop_path_rate": variant.drop_path_rate}


def test_drop_path_rate_argument():
    model = CvT(**TINY_CONFIG, drop_path_rate=0.2)
    assert _drop_path_rates(model) == pytest.approx(_expected_rates((1, 2, 2), 0.2))
    # A last stage of one block has no rise: rate 0, and no division by zero.
    model = CvT((1, 1, 1), (8, 16, 24), (1, 2, 3), drop_path_rate=0.5, classes=3)
    assert _drop_path_rates(model) == {"stage0_block0": 0.0, "stage1_block0": 0.0, "stage2_block0": 0.0}


# ---------------------------------------------------------------------------------------------
# The generic builder
# ---------------------------------------------------------------------------------------------


def test_generic_builder_tiny_config():
    model = CvT(**TINY_CONFIG)
    assert model.name == "cvt"
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 10)
    assert model.count_params() == expected_params((1, 2, 2), (16, 32, 48), classes=10)
    blocks = [layer.name for layer in model.layers if "_block" in layer.name]
    assert blocks == ["stage0_block0", "stage1_block0", "stage1_block1", "stage2_block0", "stage2_block1"]
    assert [model.get_layer(f"stage2_block{j}").attn.num_heads for j in range(2)] == [3, 3]


def test_generic_builder_other_geometry():
    """Two stages, other kernels/strides/paddings, MLP ratio 2, custom default size and name."""
    model = CvT(
        depths=(1, 2),
        embed_dims=(8, 16),
        num_heads=(2, 4),
        mlp_ratio=2.0,
        patch_sizes=(3, 5),
        patch_strides=(2, 3),
        patch_paddings=(1, 2),
        classes=5,
        default_size=32,
        name="research",
    )
    assert model.name == "research"
    assert model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 5)
    # 32 -> (32 + 2 - 3) // 2 + 1 = 16 -> (16 + 4 - 5) // 3 + 1 = 6
    assert tuple(model.get_layer("stage0_output").output.shape) == (None, 16, 16, 8)
    assert tuple(model.get_layer("stage1_block1").output[0].shape) == (None, 6, 6, 16)
    assert model.count_params() == expected_params((1, 2), (8, 16), classes=5, patch_sizes=(3, 5), mlp_ratio=2.0)
    out = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Invalid arguments name the argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"weights": "imagenet"}, ValueError, "weights"),
        ({"weights": 123}, TypeError, "weights"),
        ({"include_top": False, "pooling": "bogus"}, ValueError, "pooling"),
        ({"pooling": "bogus"}, ValueError, "pooling"),
        ({"input_shape": (2, 2, 3)}, ValueError, "input_shape"),
        ({"input_shape": (2, 64, 3)}, ValueError, "height"),
        ({"input_shape": (64, 2, 3)}, ValueError, "width"),
        ({"input_shape": (224, 224)}, ValueError, "input_shape"),
        ({"input_shape": (None, None, None)}, ValueError, "channels"),
        ({"classes": 0}, ValueError, "classes"),
        ({"classes": "10"}, TypeError, "classes"),
        ({"depths": (1, 2)}, ValueError, "depths"),
        ({"patch_strides": (4, 2)}, ValueError, "patch_strides"),
        ({"num_heads": (1, 3, 3)}, ValueError, "num_heads"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CvT(**{**TINY_CONFIG, **kwargs})


def test_unknown_weights_name():
    with pytest.raises(ValueError, match="`weights`='bogus' is not a pretrained checkpoint of cvt13"):
        CvT13(weights="bogus")


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "missing.weights.h5"
    with pytest.raises(ValueError, match="`weights` file not found"):
        CvT13(weights=str(missing))
    with pytest.raises(ValueError, match="`weights` file not found"):
        CvT13(weights=missing)  # os.PathLike too


def test_classes_contradicting_the_weights_file(tiny_reference):
    path, _, _ = tiny_reference
    with pytest.raises(ValueError, match=r"has a 10-class classifier, got classes=1000; leave `classes` out"):
        CvT(**{**TINY_CONFIG, "classes": 1000}, weights=path)
    # include_top=False ignores the classifier, so `classes` does not matter there.
    assert CvT(**{**TINY_CONFIG, "classes": 1000}, weights=path, include_top=False).output_shape == (
        None,
        None,
        None,
        48,
    )


def test_weights_file_without_classifier(tiny_reference, tmp_path):
    path, _, _ = tiny_reference
    backbone_file = str(tmp_path / "backbone.weights.h5")
    CvT(**TINY_BACKBONE, weights=path, include_top=False).save_weights(backbone_file)
    with pytest.raises(ValueError, match="include_top=False"):
        CvT(**TINY_CONFIG, weights=backbone_file)


def test_weights_file_of_another_architecture(tiny_reference):
    path, _, _ = tiny_reference
    with pytest.raises(ValueError, match="model 'cvt13'"):
        CvT13(weights=path, include_top=False)


def test_weights_without_top_give_the_same_features(tiny_reference):
    path, x, logits = tiny_reference
    kwargs = dict(weights=path, input_shape=(None, None, 3), include_preprocessing=False)
    full = CvT(**TINY_CONFIG, classifier_activation=None, **kwargs)
    np.testing.assert_allclose(_np(full(x)), logits, atol=1e-4)
    last_map = keras.Model(full.input, full.get_layer("stage2_block1").output[0])
    backbone = CvT(**TINY_BACKBONE, include_top=False, **kwargs)
    out = _np(backbone(x))
    assert out.shape == (2, 4, 5, 48)
    np.testing.assert_allclose(out, _np(last_map(x)), atol=1e-6)
    # The loaded weights are the file's, not a random initialisation.
    random_backbone = CvT(**TINY_BACKBONE, include_top=False, input_shape=(None, None, 3), include_preprocessing=False)
    assert np.abs(_np(random_backbone(x)) - out).max() > 0.1
