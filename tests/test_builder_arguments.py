"""Every builder argument is checked for type and range before anything is built or fetched,
and the error names the argument and the value it got."""

import json
import re

import keras
import numpy as np
import pytest

from keras_cvt import CvT, CvT13, CvT21, CvTW24, builder
from keras_cvt import cache, hf
from tests.conftest import TINY_CONFIG

VARIANTS = [CvT13, CvT21, CvTW24]


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if the builder gets as far as creating the input or fetching weights:
    the arguments must be refused before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("the builder went on to build or fetch with an invalid argument")

    monkeypatch.setattr(builder, "_image_input", refuse)
    monkeypatch.setattr(cache, "fetch", refuse)
    monkeypatch.setattr(hf, "read_repo", refuse)  # hf:// sources: reads the hub


# (arguments over TINY_CONFIG, error, what the message must say)
INVALID = [
    ({"include_top": "no"}, TypeError, "`include_top` must be True or False, got include_top='no'"),
    ({"include_top": 1}, TypeError, "`include_top` must be True or False, got include_top=1"),
    ({"include_preprocessing": "no"}, TypeError, "`include_preprocessing` must be True or False"),
    ({"classes": True}, TypeError, "`classes` must be an integer, got classes=True"),
    ({"classes": 10.0}, TypeError, "`classes` must be an integer, got classes=10.0"),
    ({"classes": -3}, ValueError, "`classes` must be an integer >= 1, got classes=-3"),
    ({"depths": (1, 2, 0)}, ValueError, "`depths` must hold integers >= 1 (blocks per stage), got depths=(1, 2, 0): stage 2 has 0"),
    ({"depths": (1, -1, 2)}, ValueError, "stage 1 has -1"),
    ({"depths": (1, 2, 2.0)}, TypeError, "`depths` must hold integers, got depths=(1, 2, 2.0): stage 2 has 2.0"),
    ({"depths": 3}, TypeError, "`depths` must be a list or tuple with one entry per stage (blocks), got depths=3"),
    ({"depths": (), "embed_dims": (), "num_heads": (), "patch_sizes": (), "patch_strides": (),
      "patch_paddings": ()}, ValueError, "at least one stage"),
    ({"embed_dims": (16.5, 32, 48)}, TypeError, "`embed_dims` must hold integers, got embed_dims=(16.5, 32, 48)"),
    ({"embed_dims": (16, 0, 48)}, ValueError, "`embed_dims` must hold integers >= 1"),
    ({"num_heads": (1, 2, 0)}, ValueError, "`num_heads` must hold integers >= 1 (attention heads per stage)"),
    ({"num_heads": (1, 2, 5)}, ValueError, "`num_heads` must divide `embed_dims` stage by stage, got num_heads=(1, 2, 5), embed_dims=(16, 32, 48): stage 2 has 5 heads for width 48"),
    ({"patch_sizes": (7, 0, 3)}, ValueError, "`patch_sizes` must hold integers >= 1"),
    ({"patch_strides": (4, 2, 0)}, ValueError, "`patch_strides` must hold integers >= 1 (embedding stride per stage), got patch_strides=(4, 2, 0): stage 2 has 0"),
    ({"patch_paddings": (-1, 1, 1)}, ValueError, "`patch_paddings` must hold integers >= 0 (embedding padding per stage), got patch_paddings=(-1, 1, 1): stage 0 has -1"),
    ({"mlp_ratio": 0}, ValueError, "`mlp_ratio` must be a finite number > 0"),
    ({"mlp_ratio": -4.0}, ValueError, "got mlp_ratio=-4.0"),
    ({"mlp_ratio": float("inf")}, ValueError, "got mlp_ratio=inf"),
    ({"mlp_ratio": 0.05}, ValueError, "the narrowest stage is 16 wide), got mlp_ratio=0.05"),
    ({"mlp_ratio": "4"}, TypeError, "`mlp_ratio` must be a number, got mlp_ratio='4'"),
    ({"drop_path_rate": 1.0}, ValueError, "`drop_path_rate` must be in [0, 1), got drop_path_rate=1.0"),
    ({"drop_path_rate": 1.5}, ValueError, "got drop_path_rate=1.5"),
    ({"drop_path_rate": -0.1}, ValueError, "got drop_path_rate=-0.1"),
    ({"drop_path_rate": float("nan")}, ValueError, "got drop_path_rate=nan"),
    ({"drop_path_rate": "0.1"}, TypeError, "`drop_path_rate` must be a number, got drop_path_rate='0.1'"),
    # The last stage of one block uses no rate at all; a wrong one is still refused.
    ({"depths": (1, 1, 1), "drop_path_rate": 1.5}, ValueError, "got drop_path_rate=1.5"),
    ({"input_shape": 224}, TypeError, "`input_shape` must be a tuple (height, width, channels), channels last, got input_shape=224"),
    ({"input_shape": (64, 64.0, 3)}, TypeError, "`input_shape` width must be a positive integer"),
    ({"input_shape": (0, 64, 3)}, ValueError, "`input_shape` height must be a positive integer, got input_shape=(0, 64, 3)"),
    ({"input_shape": (64, 64, 0)}, ValueError, "`input_shape` channels must be a positive integer"),
    ({"input_shape": (64, 64, 3, 1)}, ValueError, "`input_shape` must be (height, width, channels)"),
    ({"input_tensor": "images"}, TypeError, "`input_tensor` must be a Keras tensor (the output of `keras.Input()` or of a layer applied to one), got str"),
    ({"classifier_activation": "bogus"}, ValueError, "`classifier_activation` must be None, the name of a Keras activation (such as 'softmax') or a callable, got classifier_activation='bogus'"),
    ({"classifier_activation": 3}, ValueError, "got classifier_activation=3"),
    ({"pooling": "bogus"}, ValueError, "`pooling` must be one of (None, 'avg', 'max', 'token'), got pooling='bogus'"),
    ({"pooling": ["avg"]}, ValueError, "got pooling=['avg']"),
    ({"name": 3}, TypeError, "`name` must be a string, got name=3"),
    ({"name": ""}, ValueError, "`name` must be a non-empty string without '/'"),
    ({"name": "a/b"}, ValueError, "got name='a/b'"),
    ({"default_size": 0}, ValueError, "`default_size` must be an integer >= 1, got default_size=0"),
]


@pytest.mark.parametrize("kwargs, error, message", INVALID, ids=[repr(k) for k, _, _ in INVALID])
def test_generic_builder_refuses_invalid_arguments(kwargs, error, message, nothing_built):
    with pytest.raises(error, match=re.escape(message)):
        CvT(**{**TINY_CONFIG, **kwargs})


VARIANT_INVALID = [
    (k, e, m) for k, e, m in INVALID
    if not {"depths", "embed_dims", "num_heads", "patch_sizes", "patch_strides", "patch_paddings",
            "mlp_ratio", "default_size"} & set(k)
]


@pytest.mark.parametrize("builder", VARIANTS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("kwargs, error, message", VARIANT_INVALID, ids=[repr(k) for k, _, _ in VARIANT_INVALID])
def test_variant_builders_refuse_invalid_arguments(builder, kwargs, error, message, nothing_built):
    with pytest.raises(error, match=re.escape(message)):
        builder(**kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"include_top": "no"}, TypeError, "`include_top` must be True or False"),
    ({"drop_path_rate": 1.5}, ValueError, "got drop_path_rate=1.5"),
    ({"include_preprocessing": "no", "include_top": False}, TypeError, "`include_preprocessing`"),
    ({"input_shape": 384}, TypeError, "`input_shape` must be a tuple"),
])
@pytest.mark.parametrize("weights", ["imagenet22k-384", "hf://microsoft/cvt-13"])
def test_pretrained_name_with_invalid_arguments_is_refused_before_the_download(
    kwargs, error, message, weights, nothing_built
):
    with pytest.raises(error, match=re.escape(message)):
        CvT13(weights=weights, **kwargs)


def test_rgb_pretrained_weights_refuse_other_channel_counts_before_the_download(nothing_built):
    """Without weights a 1-channel input skips the built-in normalisation; pretrained RGB
    weights cannot serve it at all, whatever include_preprocessing says."""
    for include_preprocessing in (True, False):
        with pytest.raises(ValueError, match="was trained on RGB images, so the input needs 3 channels, got 1"):
            CvT13(weights="imagenet", include_top=False, input_shape=(None, None, 1),
                  include_preprocessing=include_preprocessing)


def test_input_shape_contradicting_input_tensor_is_refused(nothing_built):
    image = keras.Input((64, 64, 3))
    with pytest.raises(ValueError, match=re.escape(
        "`input_shape`=(224, 224, 3) contradicts `input_tensor`, whose shape is (64, 64, 3)"
    )):
        CvT(**TINY_CONFIG, input_tensor=image, input_shape=(224, 224, 3))
    with pytest.raises(ValueError, match="contradicts `input_tensor`"):
        CvT13(include_top=False, input_tensor=image, input_shape=(None, None, 4))
    # A variable-size tensor does not promise the fixed size input_shape asks for.
    with pytest.raises(ValueError, match="contradicts `input_tensor`"):
        CvT(**TINY_CONFIG, input_tensor=keras.Input((None, None, 3)), input_shape=(64, 64, 3))


def test_input_tensor_needs_rank_4_and_known_channels(nothing_built):
    with pytest.raises(ValueError, match=re.escape("`input_tensor` must be a 4D NHWC image batch, got shape (None, 64, 3)")):
        CvT(**TINY_CONFIG, input_tensor=keras.Input((64, 3)))
    with pytest.raises(ValueError, match="`input_tensor` must have a known number of channels"):
        CvT(**TINY_CONFIG, input_tensor=keras.Input((64, 64, None)))


def test_input_shape_agreeing_with_input_tensor_is_accepted():
    image = keras.Input((64, 80, 3))
    for input_shape in ((64, 80, 3), (None, None, 3), [64, None, 3]):
        model = CvT(**TINY_CONFIG, input_tensor=image, input_shape=input_shape)
        assert model.input is image and model.output_shape == (None, 10)


def test_numpy_scalars_and_arrays_are_accepted_as_python_values():
    """NumPy integers, floats and bools are what configs and sweeps often hold; the model's
    config then holds Python values (it is written as JSON)."""
    model = CvT(
        depths=np.array([1, 2, 2]),
        embed_dims=[np.int64(16), np.int32(32), 48],
        num_heads=(1, 2, 3),
        mlp_ratio=np.float32(2.0),
        drop_path_rate=np.float64(0.2),
        classes=np.int64(7),
        include_top=np.True_,
        include_preprocessing=np.False_,
        input_shape=(np.int64(32), None, 3),
    )
    assert model.input_shape == (None, 32, None, 3)
    assert model.output_shape == (None, 7)
    assert "preprocessing" not in [layer.name for layer in model.layers]
    predictions = model.get_layer("predictions")
    assert type(predictions.units) is int and predictions.units == 7
    block = model.get_layer("stage2_block1")
    assert type(block.dim) is int and type(block.drop_path_rate) is float
    assert block.drop_path_rate == pytest.approx(0.2)
    assert model.get_layer("stage1_block0").fc1.units == 64  # 32 x mlp_ratio 2
    json.loads(model.to_json())
    backbone = CvT(**{**TINY_CONFIG, "classes": np.int64(10)}, include_top=np.bool_(False), pooling="avg")
    assert backbone.output_shape == (None, 48)


def test_variant_accepts_numpy_classes():
    model = CvT13(classes=np.int64(10), input_shape=(32, 32, 3))
    assert model.output_shape == (None, 10)
    assert type(model.get_layer("predictions").units) is int


@pytest.mark.parametrize("shape, axis_name", [((1, 1, 1, 3), "height 1"), ((1, 64, 2, 3), "width 2")])
def test_variable_size_model_names_an_image_too_small(shape, axis_name):
    """A (None, None, 3) model cannot check the size when it is built; the first token embedding
    refuses it when called, eagerly and under predict, instead of the backend's convolution."""
    model = CvT(**TINY_CONFIG, input_shape=(None, None, 3))
    x = np.zeros(shape, "float32")
    message = (f"The input of `stage0_embedding` has {axis_name}, too small for its 7x7 kernel with "
               "padding 2: it needs at least 3. The image is too small for this model.")
    with pytest.raises(ValueError, match=re.escape(message)):
        model(x)
    with pytest.raises(ValueError, match=re.escape(message)):
        model.predict(x, verbose=0)
    # The smallest size that leaves a token runs.
    assert keras.ops.convert_to_numpy(model(np.zeros((1, 3, 3, 3), "float32"))).shape == (1, 10)
