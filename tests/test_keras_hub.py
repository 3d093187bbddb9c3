"""keras-hub integration: CvTBackbone / CvTImageClassifier from hf:// repos and preset names on the
stand-in hub, checked against the original code's logits; save_to_preset read back by keras-hub's
own generic loader; the image converter's evaluation transform."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub", reason="needs the hub extra (keras-hub)")

import keras_cvt  # noqa: E402
from keras_cvt import hf, pretrained, transforms  # noqa: E402
from keras_cvt.keras_hub import CvTBackbone, CvTImageClassifier, presets  # noqa: E402
from keras_cvt.keras_hub import backbone as backbone_module  # noqa: E402
from keras_cvt.keras_hub.preprocessor.image_converter import CvTImageConverter  # noqa: E402
from tests.conftest import ROOT, TINY_CONFIG, quick_jax_env  # noqa: E402
from tests.test_hf_hub import (
    HOSTILE_CONFIGS,
    LABELS,
    REPO,
    fake_hub,
    publish,
    tiny_config,
    tiny_files,
    tiny_io,
)  # noqa: E402, F401 (fixtures)
from tests.test_pretrained import isolated, reference_io, served  # noqa: E402, F401 (fixtures)

TOLERANCE = 1e-4
SOURCE = f"hf://{REPO}"


@pytest.mark.slow  # a fresh interpreter importing TensorFlow and keras-hub
def test_names_are_lazy_and_import_keras_hub_only_when_used():
    code = (
        "import sys, keras_cvt\n"
        "assert 'keras_hub' not in sys.modules\n"
        "assert keras_cvt.CvTImageClassifier.backbone_cls is keras_cvt.CvTBackbone\n"
        "assert 'keras_hub' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)


def test_classifier_from_hf_repo_gives_the_original_logits(fake_hub, tiny_files, tiny_io, monkeypatch):
    x, logits = tiny_io
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]})
    # The weights load into the one model the backbone is built from: no model to copy from.
    built = []
    monkeypatch.setattr(backbone_module, "CvT", lambda **kwargs: built.append(kwargs) or keras_cvt.CvT(**kwargs))
    classifier = CvTImageClassifier.from_preset(SOURCE, preprocessor=None)
    assert len(built) == 1 and built[0].get("weights") is None
    assert np.abs(classifier.predict(x, verbose=0) - logits).max() <= TOLERANCE
    assert classifier.labels == LABELS and classifier.num_classes == TINY_CONFIG["classes"]
    # keras-hub's preprocessor with the checkpoint's evaluation transform (none recorded: the 224 one).
    converter = CvTImageClassifier.from_preset(SOURCE).preprocessor.image_converter
    assert (converter.image_size, converter.crop_ratio) == ((224, 224), 0.875)


@pytest.mark.slow  # four models built and run
def test_backbone_from_hf_repo_is_a_feature_pyramid(fake_hub, tiny_files, tiny_io):
    x, _ = tiny_io
    publish(fake_hub, {"tf_model.h5": tiny_files["tf_model.h5"]})
    backbone = CvTBackbone.from_preset(SOURCE)
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    pyramid = keras_cvt.CvT(
        **hf.read_config(SOURCE).config, weights=None, include_top=False, include_preprocessing=False
    )
    features = keras_hub.models.Backbone(inputs=backbone.inputs, outputs=backbone.pyramid_outputs)
    maps = features.predict(x, verbose=0)
    height, width = x.shape[1:3]
    for level, stride, dim in zip(("P2", "P3", "P4"), (4, 8, 16), TINY_CONFIG["embed_dims"]):
        assert maps[level].shape == (len(x), height // stride, width // stride, dim)
    # The class token and the last map are those of keras_cvt's own model with these weights.
    token = keras_cvt.from_hf(SOURCE, include_top=False, pooling="token", include_preprocessing=False)
    assert np.abs(backbone.predict(x, verbose=0) - token.predict(x, verbose=0)).max() <= 1e-5
    last = keras_cvt.from_hf(SOURCE, include_top=False, include_preprocessing=False)
    assert np.abs(maps["P4"] - last.predict(x, verbose=0)).max() <= 1e-5
    assert pyramid.output_shape == (None, None, None, TINY_CONFIG["embed_dims"][-1])


@pytest.mark.slow  # a preset saved and loaded three ways
def test_save_to_preset_loads_back_through_keras_hubs_generic_classifier(
    fake_hub, tiny_files, tiny_io, tmp_path
):
    x, logits = tiny_io
    publish(fake_hub, {"pytorch_model.bin": tiny_files["pytorch_model.bin"]})
    classifier = CvTImageClassifier.from_preset(SOURCE)
    classifier.save_to_preset(str(tmp_path / "preset"))
    fake_hub.stop()
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"))
    assert type(loaded) is CvTImageClassifier and loaded.labels == LABELS
    assert (
        np.abs(loaded.backbone.predict(x, verbose=0) - classifier.backbone.predict(x, verbose=0)).max() == 0
    )
    # Without its preprocessor it takes normalised images: the original's logits again.
    bare = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "preset"), preprocessor=None)
    assert np.abs(bare.predict(x, verbose=0) - logits).max() <= TOLERANCE
    # With it, pixels in: the same outputs as the saved classifier's.
    pixels = np.random.RandomState(0).randint(0, 256, (2, 250, 300, 3)).astype("float32")
    assert np.abs(loaded.predict(pixels, verbose=0) - classifier.predict(pixels, verbose=0)).max() == 0
    backbone = keras_hub.models.Backbone.from_preset(str(tmp_path / "preset"))
    assert type(backbone) is CvTBackbone
    assert (
        json.loads((tmp_path / "preset" / "config.json").read_text())["registered_name"]
        == "keras_cvt>CvTBackbone"
    )


@pytest.mark.parametrize("name", ["imagenet", "imagenet-384"])
def test_converter_applies_the_checkpoints_evaluation_transform(name):
    transform = pretrained.transform_for("cvt13", name)
    converter = CvTImageConverter.from_transform(transform)
    image = np.random.RandomState(1).randint(0, 256, (300, 260, 3)).astype("uint8")
    expected = transforms.from_record(transform)(image).numpy() / 255.0
    expected = (expected - np.array(transform.mean)) / np.array(transform.std)
    single = np.asarray(converter(image))
    assert single.shape == (transform.size, transform.size, 3)
    assert np.abs(single - expected).max() <= 1e-5
    batch = np.asarray(converter(np.stack([image, image[::-1]])))
    assert np.abs(batch[0] - single).max() == 0
    again = CvTImageConverter.from_config(converter.get_config())
    assert np.abs(np.asarray(again(image)) - single).max() == 0


def test_presets_are_the_seven_checkpoints():
    assert sorted(CvTBackbone.presets) == sorted(presets.CHECKPOINTS) == sorted(CvTImageClassifier.presets)
    assert len(presets.CHECKPOINTS) == len(pretrained.PRETRAINED) == 7
    assert presets.CHECKPOINTS["cvtw24_imagenet22k_384"].repo == "microsoft/cvt-w24-384-22k"


def test_backbone_takes_the_attention_options_of_cvt():
    architecture = {k: TINY_CONFIG[k] for k in ("depths", "embed_dims", "num_heads")}
    options = {"attention_kernel_size": 5, "attention_padding": 2, "kv_stride": 3, "qkv_bias": False}
    backbone = CvTBackbone(**architecture, **options)
    attention = backbone.get_layer("stage1_block0").attn
    assert (attention.attention_kernel_size, attention.attention_padding, attention.kv_stride) == (5, 2, 3)
    assert attention.proj_q.bias is None
    config = backbone.get_config()
    assert {k: config[k] for k in options} == options
    assert CvTBackbone.from_config(config).get_config() == config
    # A config saved before the options were arguments builds the defaults.
    old = {k: v for k, v in config.items() if k not in keras_cvt.architectures.ATTENTION_OPTIONS}
    rebuilt = CvTBackbone.from_config(old).get_config()
    assert {k: rebuilt[k] for k in keras_cvt.architectures.ATTENTION_OPTIONS} == keras_cvt.architectures.ATTENTION_OPTIONS


def test_classifier_refuses_labels_of_another_width():
    backbone = CvTBackbone(**{k: TINY_CONFIG[k] for k in ("depths", "embed_dims", "num_heads")})
    with pytest.raises(ValueError, match=r"`labels` must be the names \(strings\) of the 10 classes, got \[.a., .b.\]"):
        CvTImageClassifier(backbone, 10, labels=["a", "b"])


@pytest.mark.slow  # the CvT-13 reference: 80 MB served, converted and run
def test_classifier_from_a_preset_name_gives_the_original_logits(fake_hub, served, reference_io):
    data, _ = served
    x, logits = reference_io
    entry = presets.CHECKPOINTS["cvt13_imagenet22k_384"]
    fake_hub.add(entry.repo, entry.revision, data)
    classifier = CvTImageClassifier.from_preset("cvt13_imagenet22k_384", preprocessor=None)
    assert np.abs(classifier.predict(x, verbose=0) - logits).max() <= TOLERANCE
    converter = CvTImageClassifier.from_preset("cvt13_imagenet22k_384").preprocessor.image_converter
    assert (converter.image_size, converter.crop_ratio) == ((384, 384), None)


_GENERIC_LOAD = """
import sys
{first}
assert "keras_cvt.keras_hub" in sys.modules
classifier = keras_hub.models.ImageClassifier.from_preset(sys.argv[1])
backbone = keras_hub.models.Backbone.from_preset(sys.argv[1])
print(type(classifier).__name__, type(backbone).__name__, classifier.num_classes)
"""


@pytest.mark.slow  # fresh interpreters importing TensorFlow and keras-hub
@pytest.mark.parametrize(
    "first", ["import keras_cvt\nimport keras_hub", "import keras_hub\nimport keras_cvt"], ids=["keras_cvt first", "keras_hub first"]
)
def test_generic_loaders_read_our_presets_after_import_keras_cvt(tmp_path, first):
    # Nothing imports keras_cvt.keras_hub: `import keras_cvt` registers our classes with Keras
    # as soon as keras-hub is imported, before it or after it.
    backbone = CvTBackbone(**{k: TINY_CONFIG[k] for k in ("depths", "embed_dims", "num_heads")})
    CvTImageClassifier(backbone, 7).save_to_preset(str(tmp_path / "preset"))
    code = _GENERIC_LOAD.format(first=first)
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "preset")], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["CvTImageClassifier", "CvTBackbone", "7"]


@pytest.mark.slow  # a fresh interpreter importing JAX and Keras
def test_plain_import_registers_nothing_until_keras_hub_is_imported():
    code = (
        "import sys, keras_cvt\n"
        "assert 'keras_hub' not in sys.modules and 'keras_cvt.keras_hub' not in sys.modules\n"
        "labels = keras_cvt.hf.labels\n"
        "assert 'keras_hub' not in sys.modules and 'tensorflow' not in sys.modules\n"
    )
    env = quick_jax_env({**os.environ, "KERAS_BACKEND": "jax"})
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, env=env)


@pytest.mark.slow  # a fresh interpreter importing TensorFlow and keras-hub
def test_a_failed_registration_does_not_fail_import_keras_hub():
    # As with a keras-hub other than the `hub` extra's: the user's import goes on, with a warning.
    code = (
        "import sys, warnings\n"
        "sys.modules['keras_cvt.keras_hub'] = None\n"
        "import keras_cvt\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import keras_hub\n"
        "assert keras_hub.models.ImageClassifier\n"
        "print([str(w.message) for w in caught if 'keras_cvt could not register' in str(w.message)])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "keras_cvt.keras_hub: ModuleNotFoundError" in result.stdout.splitlines()[-1]


# --- presets: bounded before building, verifiable when we wrote them ---


@pytest.fixture(scope="module")
def saved_preset(tmp_path_factory):
    """A tiny CvTImageClassifier preset with its preprocessor, as save_to_preset writes it."""
    from keras_cvt.keras_hub import CvTImageClassifierPreprocessor

    backbone = CvTBackbone(depths=(1, 1, 1), embed_dims=(16, 32, 48), num_heads=(1, 2, 3))
    preprocessor = CvTImageClassifierPreprocessor(image_converter=CvTImageConverter())
    classifier = CvTImageClassifier(backbone, 7, preprocessor=preprocessor, labels=[f"c{i}" for i in range(7)])
    path = tmp_path_factory.mktemp("saved") / "preset"
    classifier.save_to_preset(str(path))
    return path


def _copy(saved_preset, tmp_path, record=True):
    import shutil

    from keras_cvt.keras_hub.preset_files import RECORD_FILE

    path = tmp_path / "preset"
    shutil.copytree(saved_preset, path)
    if not record:
        (path / RECORD_FILE).unlink()
    return path


def _edit_json(path, change):
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _backbone(config):
    return config["config"]["backbone"]["config"]


def _converter(config):
    return config["config"]["preprocessor"]["config"]["image_converter"]["config"]


def test_save_to_preset_records_every_file(saved_preset):
    from keras_cvt import atomic
    from keras_cvt.keras_hub.preset_files import RECORD_FILE

    record = json.loads((saved_preset / RECORD_FILE).read_text())
    files = sorted(p.name for p in saved_preset.iterdir() if p.name != RECORD_FILE)
    assert sorted(record["files"]) == files
    assert {"config.json", "task.json", "model.weights.h5", "task.weights.h5"} <= set(files)
    for name, entry in record["files"].items():
        path = saved_preset / name
        assert entry == {"size": path.stat().st_size, "sha256": atomic.sha256_file(path)}


# (which file, its change, the words of the refusal): the preset written by others (no record).
HOSTILE_PRESETS = {
    "too many blocks": ("task.json", lambda c: _backbone(c).update(depths=[1, 2, 100_000]), "depths must be a list of integers from 1 to 256"),
    "too many stages": ("task.json", lambda c: _backbone(c).update(depths=[1] * 10_000), "depths must be a list of 1 to 8 integers"),
    "too wide": ("task.json", lambda c: _backbone(c).update(embed_dims=[16, 32, 10**9]), "embed_dims must be a list of integers from 1 to 16,384"),
    "huge mlp": ("task.json", lambda c: _backbone(c).update(mlp_ratio=1e12), "mlp_ratio must be a number > 0 and <= 64"),
    "mlp not a number": ("task.json", lambda c: _backbone(c).update(mlp_ratio="x"), "mlp_ratio must be a number"),
    "zero heads": ("task.json", lambda c: _backbone(c).update(num_heads=[1, 0, 3]), "num_heads must be a list of integers from 1"),
    "too many classes": ("task.json", lambda c: c["config"].update(num_classes=10**7, labels=None), "classes must be an integer from 1 to 1,000,000"),
    "labels not strings": ("task.json", lambda c: c["config"].update(labels=[None] * 7), r"`labels` must be the names \(strings\)"),
    "huge image": ("task.json", lambda c: _converter(c).update(image_size=[16000, 16000]), r"image_size must be \(height, width\), each from 1 to 4096"),
    "tiny crop": ("task.json", lambda c: _converter(c).update(crop_ratio=1e-9), "crop_ratio must be a number from 0.1 to 1"),
}


@pytest.mark.parametrize("loader", ["keras_hub", "keras_cvt"])
@pytest.mark.parametrize("case", HOSTILE_PRESETS)
def test_hostile_preset_is_refused_by_field_before_building(saved_preset, tmp_path, monkeypatch, case, loader):
    import resource

    from keras_cvt.keras_hub import backbone as backbone_module

    name, change, words = HOSTILE_PRESETS[case]
    preset = _copy(saved_preset, tmp_path, record=False)
    _edit_json(preset / name, change)
    built = []
    monkeypatch.setattr(backbone_module, "CvT", lambda **kwargs: built.append(kwargs) or keras_cvt.CvT(**kwargs))
    load = (keras_hub.models.ImageClassifier if loader == "keras_hub" else CvTImageClassifier).from_preset
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=rf"(config|task\.json).*: {words}"):
        load(str(preset))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # KiB
    if case not in ("too many classes", "labels not strings", "huge image", "tiny crop"):
        assert built == []  # refused before the backbone was built


def test_preset_task_of_another_class_is_one_clear_error(saved_preset, tmp_path):
    preset = _copy(saved_preset, tmp_path, record=False)
    _edit_json(preset / "task.json", lambda c: c.update(registered_name="keras_hub>ResNetImageClassifier"))
    with pytest.raises(ValueError, match=r"task\.json: registered_name is 'keras_hub>ResNetImageClassifier', expected 'keras_cvt>CvTImageClassifier'"):
        CvTImageClassifier.from_preset(str(preset))
    # keras-hub's generic loader then builds our class without its arguments.
    with pytest.raises(ValueError, match="CvTImageClassifier needs `num_classes`: a preset whose task.json"):
        keras_hub.models.ImageClassifier.from_preset(str(preset))
    # With num_classes, a new classifier on the preset's backbone, as keras-hub allows.
    assert CvTImageClassifier.from_preset(str(preset), num_classes=3).num_classes == 3


@pytest.mark.parametrize(
    "text, words",
    [("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"), ('{"module": "keras_cvt', "not a JSON file")],
    ids=["deeply nested", "truncated"],
)
@pytest.mark.parametrize("name", ["config.json", "task.json"])
def test_hostile_preset_json_is_refused_naming_the_file(saved_preset, tmp_path, name, text, words):
    preset = _copy(saved_preset, tmp_path, record=False)
    (preset / name).write_text(text)
    with pytest.raises(ValueError, match=rf"preset/{name}: {words}"):
        CvTImageClassifier.from_preset(str(preset))


@pytest.mark.parametrize("loader", ["keras_hub", "keras_cvt"])
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_preset_weights_without_a_record_are_named(saved_preset, tmp_path, loader, damage):
    preset = _copy(saved_preset, tmp_path, record=False)
    weights = preset / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    load = (keras_hub.models.ImageClassifier if loader == "keras_hub" else CvTImageClassifier).from_preset
    with pytest.raises(ValueError, match=rf"weights file '{weights}' \([\d,]+ bytes\) cannot be loaded"):
        load(str(preset))


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("loader", ["keras_hub", "keras_cvt", "backbone"])
@pytest.mark.parametrize(
    "name, damage, words",
    [
        ("model.weights.h5", _flip_one_byte, "has SHA-256 [0-9a-f]{64}, its record .* says '[0-9a-f]{64}': it changed after it was saved"),
        ("model.weights.h5", lambda p: p.write_bytes(p.read_bytes()[:1000]), "has 1,000 bytes, its record .* says [0-9]+: it is truncated or damaged"),
        ("task.weights.h5", _flip_one_byte, "has SHA-256 .*: it changed after it was saved"),
        ("task.weights.h5", lambda p: p.unlink(), "is missing; the preset's record .* lists it"),
    ],
    ids=["flipped weights", "truncated weights", "flipped task weights", "missing task weights"],
)
def test_damaged_file_of_a_recorded_preset_is_refused_by_name(saved_preset, tmp_path, loader, name, damage, words):
    preset = _copy(saved_preset, tmp_path)
    damage(preset / name)
    if loader == "backbone":
        load = keras_hub.models.Backbone.from_preset
        if damage is _flip_one_byte and name == "task.weights.h5":
            # A backbone reads none of the task's file (a missing one means a damaged preset).
            assert type(load(str(preset))) is CvTBackbone
            return
    else:
        load = (keras_hub.models.ImageClassifier if loader == "keras_hub" else CvTImageClassifier).from_preset
    with pytest.raises(ValueError, match=rf"preset file {preset / name} {words}"):
        load(str(preset))


def test_recorded_preset_loads_and_a_preset_without_record_loads_as_keras_hub_would(saved_preset, tmp_path):
    x = np.random.RandomState(0).randint(0, 256, (1, 64, 64, 3)).astype("float32")
    reference = keras_hub.models.ImageClassifier.from_preset(str(saved_preset)).predict(x, verbose=0)
    plain = keras_hub.models.ImageClassifier.from_preset(str(_copy(saved_preset, tmp_path, record=False)))
    assert np.array_equal(plain.predict(x, verbose=0), reference)
    assert plain.labels == [f"c{i}" for i in range(7)]


def test_an_edited_config_of_a_recorded_preset_is_refused_before_keras_hub_reads_it(saved_preset, tmp_path):
    # A recorded preset's configs are verified before keras-hub reads them (our loaders).
    preset = _copy(saved_preset, tmp_path)
    _edit_json(preset / "task.json", lambda c: _backbone(c).update(depths=[1, 1, 2]))
    with pytest.raises(ValueError, match=rf"preset file {preset / 'task.json'} has"):
        CvTImageClassifier.from_preset(str(preset))


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_hub_config_is_refused_before_any_weights_or_build(fake_hub, tiny_files, monkeypatch, case):
    change, words = HOSTILE_CONFIGS[case]
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, config=tiny_config(**change))
    built = []
    monkeypatch.setattr(backbone_module, "CvT", lambda **kwargs: built.append(kwargs))
    with pytest.raises(ValueError, match=rf"^config\.json of {SOURCE}: {words}"):
        CvTImageClassifier.from_preset(SOURCE)
    assert [path for _, path, _, _ in fake_hub.requests if not path.endswith("/config.json")] == []
    assert built == []
