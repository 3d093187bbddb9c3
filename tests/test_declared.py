"""keras_cvt.declared: the sizes a config file declares, refused by field before any work."""

import json
import math
import resource

import pytest

from keras_cvt import architectures, declared
from keras_cvt.conversion.mapping import expected_shapes

SOURCE = "config.json of hf://someone/cvt"
CVT13 = dict(architectures.VARIANTS["cvt13"].config)


@pytest.mark.parametrize("name", sorted(architectures.VARIANTS))
def test_published_variants_pass_with_their_parameter_count(name):
    variant = architectures.VARIANTS[name]
    count = declared.check_architecture(dict(variant.config), SOURCE, classes=1000)
    # The builders' count_params() of README's table (BatchNorm statistics included).
    assert count == {"cvt13": 20_023_208, "cvt21": 31_664_552, "cvtw24": 277_330_792}[name]


HOSTILE_ARCHITECTURES = [
    ({"depths": (1, 2, 100_000)}, "depth must be a list of integers from 1 to 256"),
    ({"depths": (1, 2, True)}, "depth must be a list of integers from 1 to 256"),
    ({"depths": (1, 2, 10.0)}, "depth must be a list of integers"),
    ({"depths": (1,) * 10_000}, "depth must be a list of 1 to 8 integers"),
    ({"depths": "1, 2, 10"}, "depth must be a list of 1 to 8 integers"),
    ({"depths": ()}, "depth must be a list of 1 to 8 integers"),
    ({"embed_dims": (64, 192, 10**9)}, "embed_dim must be a list of integers from 1 to 16,384"),
    ({"num_heads": (1, 0, 6)}, "num_heads must be a list of integers from 1"),
    ({"num_heads": (1, 5, 6)}, "num_heads must be numbers of heads that divide the widths"),
    ({"num_heads": (1, 3)}, "num_heads must be a list of 3 entries"),
    ({"mlp_ratio": 1e12}, "mlp_ratio must be a number > 0 and <= 64"),
    ({"mlp_ratio": "x"}, "mlp_ratio must be a number"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio must be a number"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a number > 0"),
    ({"patch_sizes": (7, 3, 1000)}, "patch_sizes must be a list of integers from 1 to 63"),
    ({"attention_kernel_size": 10**6}, "attention_kernel_size must be an integer from 1 to 63"),
    ({"kv_stride": -1}, "kv_stride must be an integer from 1 to 64"),
    ({"embed_dims": (4096, 8192, 16384), "num_heads": (1, 1, 1), "depths": (8, 8, 64)}, "more than the 1,000,000,000"),
]


@pytest.mark.parametrize("change, message", HOSTILE_ARCHITECTURES, ids=lambda v: str(v)[:40])
def test_hostile_architectures_are_refused_by_field(change, message):
    fields = {"depths": "depth", "embed_dims": "embed_dim"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"^config\.json of hf://someone/cvt: ") as raised:
        declared.check_architecture({**CVT13, **change}, SOURCE, fields=fields, classes=1000)
    assert message in str(raised.value)
    # Arithmetic only: refusing allocates nothing like the model it describes.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_a_missing_field_is_named():
    config = {k: v for k, v in CVT13.items() if k != "num_heads"}
    with pytest.raises(ValueError, match="the field 'num_heads' is missing"):
        declared.check_architecture(config, SOURCE)


@pytest.mark.parametrize("classes", [0, 10**7, 2.5, True, "1000"])
def test_hostile_class_counts_are_refused(classes):
    with pytest.raises(ValueError, match="classes must be an integer from 1 to 1,000,000"):
        declared.check_architecture(CVT13, SOURCE, classes=classes)


def test_the_parameter_count_is_the_converters_arithmetic():
    config = {**CVT13, "mlp_ratio": 2.5, "attention_kernel_size": 5, "attention_padding": 2, "qkv_bias": False}
    shapes = expected_shapes({**config, "classes": 7})
    assert declared.check_architecture(config, SOURCE, classes=7) == sum(math.prod(s) for s in shapes.values())


def test_json_of_the_limit_size_is_read_and_a_larger_one_is_not(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "cvt"}))
    assert declared.read_json(path, "config.json") == {"model_type": "cvt"}
    with open(path, "r+b") as f:
        f.truncate(300 * 2**20)  # sparse: 300 MB declared, nothing written
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"config\.json: 314,572,800 bytes, more than the 16,777,216"):
        declared.read_json(path, "config.json")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: never read


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
        ("[" * 40 + "]" * 40, "nested deeper than 32 levels"),
        ('{"model_type": "cvt", "depth": [1, 2', "not a JSON file"),
        ("", "not a JSON file"),
        ("\xff\xfe{}", "not a JSON file"),
    ],
    ids=["deep", "40 levels", "truncated", "empty", "not utf-8"],
)
def test_hostile_json_is_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"^task.json of preset: {message}"):
        declared.read_json(path, "task.json of preset")


def test_json_at_the_depth_limit_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 32 + "]" * 32)
    assert declared.read_json(path, "x") is not None


@pytest.mark.parametrize(
    "image_size, crop_ratio, message",
    [
        ((16000, 16000), 0.875, "image_size must be"),
        ((224,), 0.875, "image_size must be"),
        ((224, 0), 0.875, "image_size must be"),
        ((224.0, 224), 0.875, "image_size must be"),
        ("224", 0.875, "image_size must be"),
        ((224, 224), 1e-9, "crop_ratio must be a number from 0.1 to 1"),
        ((224, 224), 1.5, "crop_ratio must be"),
        ((224, 224), "0.875", "crop_ratio must be"),
    ],
)
def test_hostile_image_converter_sizes_are_refused(image_size, crop_ratio, message):
    with pytest.raises(ValueError, match=f"^task.json: {message}"):
        declared.check_image_size(image_size, crop_ratio, "task.json")


def test_published_image_sizes_pass():
    declared.check_image_size((224, 224), 0.875, "x")
    declared.check_image_size([384, 384], None, "x")
    declared.check_image_size((declared.MAX_IMAGE_SIDE, 1), 1.0, "x")
