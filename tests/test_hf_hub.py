"""`hf://owner/repo[@revision]`: a transformers CvtForImageClassification repo on the stand-in hub
(tests/test_pretrained.py's `FakeHub`, answering like huggingface.co), in each of its three
weight formats, built from config.json and checked against the original code's logits."""

import json
import os

import numpy as np
import pytest

import keras_cvt
from keras_cvt import CvT13, downloads, hf, hf_config
from keras_cvt.architectures import ATTENTION_OPTIONS
from tests.conftest import FIXTURES, TINY_CONFIG
from tests.test_pretrained import fake_hub, isolated, reference_io, served  # noqa: F401 (fixtures)
from tests.test_pretrained import write_hf_tf_h5
from keras_cvt.conversion import hf_to_original_key, read_checkpoint

TOLERANCE = 1e-4
REPO = "someone/tiny-cvt"
LABELS = [f"class {i}" for i in range(TINY_CONFIG["classes"])]


def tiny_config(**changes):
    """The config.json that transformers writes for the tiny model of tests/fixtures."""
    import transformers

    config = transformers.CvtConfig(
        depth=list(TINY_CONFIG["depths"]),
        embed_dim=list(TINY_CONFIG["embed_dims"]),
        num_heads=list(TINY_CONFIG["num_heads"]),
        id2label=dict(enumerate(LABELS)),
        architectures=["CvtForImageClassification"],
    ).to_dict()
    return {**config, **changes}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """{file name: bytes} of the tiny original-code model as a hub repo's weight files."""
    import safetensors.torch
    import torch
    import transformers

    original = read_checkpoint(FIXTURES / "cvt_tiny_official_perturbed.pth")
    # transformers' own names for every tensor, with the original's values. (Its CvtStage
    # indexes a stage's drop path rates by the stage number, so a last stage of fewer blocks
    # than its number fails to build: names come from a deeper one, those of its extra block
    # left out.)
    deeper = tiny_config(depth=[1, 2, 3])
    names = transformers.CvtForImageClassification(transformers.CvtConfig(**deeper)).state_dict()
    state = {
        name: torch.from_numpy(np.ascontiguousarray(original[hf_to_original_key(name)]))
        for name in names
        if hf_to_original_key(name) in original
    }
    assert sorted(hf_to_original_key(name) for name in state) == sorted(original)
    folder = tmp_path_factory.mktemp("repo")
    safetensors.torch.save_file(state, folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    write_hf_tf_h5(original, folder / "tf_model.h5")
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture(scope="module")
def tiny_io():
    io = np.load(FIXTURES / "cvt_tiny_official_perturbed_io.npz")
    return io["x"].transpose(0, 2, 3, 1), io["logits"]


def publish(fake_hub, files, revision="main", config=None):
    commit = None
    for filename, data in files.items():
        commit = fake_hub.add(REPO, revision, data, filename=filename, commit=commit).commit
    config = json.dumps(config or tiny_config(), indent=2).encode()
    fake_hub.add(REPO, revision, config, etag="git", filename="config.json", commit=commit)
    return commit


@pytest.mark.parametrize("filename", hf.WEIGHT_FILES)
def test_each_weight_format_gives_the_original_logits(fake_hub, tiny_files, tiny_io, filename):
    x, logits = tiny_io
    publish(fake_hub, {filename: tiny_files[filename]})
    model = keras_cvt.from_hf(
        f"hf://{REPO}", include_preprocessing=False, classifier_activation=None, input_shape=(None, None, 3)
    )
    assert model.output_shape == (None, TINY_CONFIG["classes"])
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE
    assert hf.labels(f"hf://{REPO}") == LABELS
    # The files it looked for before finding this one were absent (404), not an error.
    fetched = [path.rsplit("/", 1)[-1] for path, _ in fake_hub.get_requests("/cdn/")]
    assert fetched == [filename]


def test_safetensors_is_preferred_and_offline_reuses_the_caches(fake_hub, tiny_files, tiny_io, monkeypatch):
    x, logits = tiny_io
    publish(fake_hub, tiny_files)
    keras_cvt.from_hf(f"hf://{REPO}")
    assert [path.rsplit("/", 1)[-1] for path, _ in fake_hub.get_requests("/cdn/")] == ["model.safetensors"]
    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = keras_cvt.from_hf(
        f"hf://{REPO}", include_preprocessing=False, classifier_activation=None, input_shape=(None, None, 3)
    )
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE


def test_revision_after_the_at_sign(fake_hub, tiny_files, tiny_io):
    x, logits = tiny_io
    commit = publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, revision="v1")
    model = keras_cvt.from_hf(f"hf://{REPO}@v1", include_top=False, pooling="token")
    assert model.output_shape == (None, TINY_CONFIG["embed_dims"][-1])
    model = keras_cvt.from_hf(
        f"hf://{REPO}@{commit}",
        include_preprocessing=False,
        classifier_activation=None,
        input_shape=(None, None, 3),
    )
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE
    with pytest.raises(downloads.NotFoundError, match="404"):
        keras_cvt.from_hf(f"hf://{REPO}@v2")


def test_variant_builder_refuses_another_architecture(fake_hub, tiny_files):
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]})
    with pytest.raises(
        ValueError, match=r"not cvt13: build it with keras_cvt.from_hf\('hf://someone/tiny-cvt'\)"
    ):
        CvT13(weights=f"hf://{REPO}")
    # Refused from config.json alone: no weights were fetched.
    assert fake_hub.get_requests("/cdn/") == []


def test_repo_without_weights_names_what_it_looked_for(fake_hub):
    publish(fake_hub, {})
    with pytest.raises(downloads.NotFoundError, match="model.safetensors, pytorch_model.bin, tf_model.h5"):
        keras_cvt.from_hf(f"hf://{REPO}")


@pytest.mark.parametrize(
    "source",
    ["someone/tiny-cvt", "hf://", "hf://no-slash", "hf://a/b@", "hf://a/../b", "hf://a/b c", "hf://a/b--c",
     "hf://a/" + "b" * 97, "hf://a/b/c"],
)
def test_bad_sources_are_refused(source):
    with pytest.raises(ValueError, match="hf://owner/name"):
        hf.parse(source)


# A revision reaches huggingface_hub's cache as a file name (refs/<revision>): each of these,
# answered by a mirror that serves any revision, would write or read outside it, or is no
# name git (hence the hub) allows.
HOSTILE_REVISIONS = {
    "absolute path": "/an/absolute/path",
    "parent": "..",
    "parent inside": "v1/../../x",
    "hidden part": "v1/.hidden",
    "leading dot": ".v1",
    "trailing slash": "v1/",
    "empty part": "v1//x",
    "trailing dot": "v1.",
    "lock suffix": "v1.lock",
    "backslash": "v1\\..\\x",
    "space": "v 1",
    "tab": "v\t1",
    "newline": "v1\nmain",
    "nul": "v1\x00",
    "delete": "v1\x7f",
    "reflog": "main@{1}",
    "lone at": "@",
    "colon": "C:v1",
    "glob": "v*",
    "question": "v?",
    "caret": "v1^",
    "tilde": "v1~1",
    "bracket": "v[1]",
    "unicode space": "v\u00a01",
    "too long": "v" * 257,
}


@pytest.mark.parametrize("name", HOSTILE_REVISIONS)
def test_hostile_revisions_are_refused_before_any_request(fake_hub, name):
    revision = HOSTILE_REVISIONS[name]
    source = f"hf://{REPO}@{revision}"
    assert not hf.is_revision(revision)
    for build in (hf.parse, keras_cvt.from_hf, lambda s: CvT13(weights=s)):
        with pytest.raises(ValueError, match="not a hub repo"):
            build(source)
    assert fake_hub.requests == []


@pytest.mark.parametrize(
    "revision", ["main", "v1.0", "refs/pr/1", "release/2024-01", "a" * 40, "0123456789abcdef" * 2 + "01234567", "feature_x@y", "v\u00e9", "%2e%2e"]
)
def test_commits_branches_and_tags_are_accepted(revision):
    assert hf.parse(f"hf://{REPO}@{revision}") == (REPO, revision)


# config.json field -> a value keras_cvt's CvT cannot express, and the words of the refusal
REFUSED = {
    "qkv_projection_method": (["dw_bn", "dw_bn", "avg"], "qkv_projection_method.*'dw_bn' only"),
    "kernel_qkv": ([3, 3, 5], "kernel_qkv=.*one attention_kernel_size for all stages"),
    "stride_kv": ([2, 2, 1], "stride_kv=.*one kv_stride for all stages"),
    "qkv_bias": ([True, False, True], "qkv_bias=.*one qkv_bias for all stages"),
    "stride_q": ([2, 2, 2], "stride_q=2, padding_q=1 with kernel_qkv=3"),
    "padding_q": ([0, 0, 0], "stride_q=1, padding_q=0 with kernel_qkv=3"),
    "padding_kv": ([0, 0, 0], "padding_kv=0 but padding_q=1"),
    "stride_kv ": ([0, 0, 0], "stride_kv must be an integer from 1 to 64, got 0"),
    "kernel_qkv ": ([0, 0, 0], "kernel_qkv must be an integer from 1 to 63, got 0"),
    "qkv_bias ": ([1, 1, 1], r"qkv_bias=\[1, 1, 1\]: expected true or false"),
    "stride_kv  ": ([2.0, 2.0, 2.0], "stride_kv must be an integer from 1 to 64, got 2.0"),
    "kernel_qkv  ": ([3, 3], "3 stages in 'depth' but 2 in 'kernel_qkv'"),
    "cls_token": ([False, True, True], "class token in the last stage"),
    "mlp_ratio": ([4.0, 4.0, 2.0], "one mlp_ratio for all stages"),
    "num_channels": (1, "3-channel"),
    "model_type": ("vit", "model_type is 'vit'"),
    "depth": ([1, 2], "embed_dim must be a list of 2 entries, one per stage"),
    "id2label": ({"0": "a", "2": "b"}, "without gaps"),
}


@pytest.mark.parametrize("field", REFUSED)
def test_config_refuses_what_cvt_cannot_express(field):
    value, words = REFUSED[field]
    # Trailing spaces tell apart the cases of one field.
    config = tiny_config(**{field.strip(): value})
    with pytest.raises(ValueError, match=words):
        hf_config.read(config, source="config.json of hf://x/y")


def test_config_reads_the_architecture_and_labels():
    model = hf_config.read(tiny_config())
    assert model.config == {
        "depths": (1, 2, 2),
        "embed_dims": (16, 32, 48),
        "num_heads": (1, 2, 3),
        "patch_sizes": (7, 3, 3),
        "patch_strides": (4, 2, 2),
        "patch_paddings": (2, 1, 1),
        "mlp_ratio": 4.0,
        "drop_path_rate": 0.1,
    }
    assert model.labels == tuple(LABELS) and model.variant is None
    cvt13 = hf_config.read(tiny_config(depth=[1, 2, 10], embed_dim=[64, 192, 384], num_heads=[1, 3, 6]))
    assert cvt13.variant == "cvt13"
    # A CvtModel (no classifier) has no labels.
    assert hf_config.read(tiny_config(architectures=["CvtModel"])).labels is None


def test_config_reads_the_attention_options_the_converter_accepts():
    fields = {"kernel_qkv": [5] * 3, "padding_q": [2] * 3, "padding_kv": [2] * 3, "stride_kv": [3] * 3}
    model = hf_config.read(tiny_config(**fields, qkv_bias=[False] * 3))
    assert {k: model.config[k] for k in ATTENTION_OPTIONS if k in model.config} == {
        "attention_kernel_size": 5,
        "attention_padding": 2,
        "kv_stride": 3,
        "qkv_bias": False,
    }
    # Single values stand for every stage, as transformers allows.
    assert hf_config.read(tiny_config(kernel_qkv=1, padding_q=0, padding_kv=0)).config["attention_kernel_size"] == 1
    # A published variant's architecture with other attention is no longer that variant.
    cvt13 = dict(depth=[1, 2, 10], embed_dim=[64, 192, 384], num_heads=[1, 3, 6])
    assert hf_config.read(tiny_config(**cvt13, stride_kv=[1] * 3)).variant is None


@pytest.mark.slow  # the CvT-13 reference: 80 MB served, converted and run
def test_cvt13_from_its_hub_repo(fake_hub, served, reference_io):
    data, _ = served
    x, logits = reference_io
    commit = fake_hub.add("microsoft/cvt-13", "main", data).commit
    config = tiny_config(
        depth=[1, 2, 10],
        embed_dim=[64, 192, 384],
        num_heads=[1, 3, 6],
        id2label={i: f"c{i}" for i in range(1000)},
    )
    fake_hub.add(
        "microsoft/cvt-13",
        "main",
        json.dumps(config).encode(),
        etag="git",
        filename="config.json",
        commit=commit,
    )
    model = CvT13(weights="hf://microsoft/cvt-13", include_preprocessing=False, classifier_activation=None)
    assert np.abs(model.predict(x, verbose=0) - logits).max() <= TOLERANCE
    with pytest.raises(ValueError, match="1000-class classifier, got classes=10"):
        CvT13(weights="hf://microsoft/cvt-13", classes=10)
    assert CvT13(weights="hf://microsoft/cvt-13", classes=1000).output_shape == (None, 1000)


def test_labels_feed_decode_predictions(fake_hub, tiny_files, tiny_io):
    x, logits = tiny_io
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]})
    model = keras_cvt.from_hf(f"hf://{REPO}", include_preprocessing=False, input_shape=(None, None, 3))
    decoded = keras_cvt.decode_predictions(
        model.predict(x, verbose=0), top=2, labels=hf.labels(f"hf://{REPO}")
    )
    best = np.argsort(logits, axis=1)[:, ::-1][:, :2]
    assert [[(i, name) for i, name, _ in row] for row in decoded] == [
        [(str(c), LABELS[c]) for c in row] for row in best
    ]
    with pytest.raises(ValueError, match=r"\(samples, 2\) \(one column per label\)"):
        keras_cvt.decode_predictions(logits, labels=["a", "b"])


# --- check before spending: config.json is bounded before any weights are requested ---

# config.json change -> the words of the refusal (after "config.json of hf://someone/tiny-cvt: ").
HOSTILE_CONFIGS = {
    "too many blocks": ({"depth": [1, 2, 100_000]}, "depth must be a list of integers from 1 to 256"),
    "too wide": ({"embed_dim": [16, 32, 10**9]}, "embed_dim must be a list of integers from 1 to 16,384"),
    "too many stages": ({"depth": [1] * 10_000}, "depth must be a list of 1 to 8 integers"),
    "huge mlp": ({"mlp_ratio": 1e12}, "mlp_ratio must be a number > 0 and <= 64, got 1000000000000.0"),
    "mlp not a number": ({"mlp_ratio": "x"}, "mlp_ratio must be a number > 0 and <= 64, got 'x'"),
    "bool block count": ({"depth": [1, 2, True]}, "depth must be a list of integers from 1 to 256"),
    "zero heads": ({"num_heads": [1, 0, 3]}, "num_heads must be a list of integers from 1"),
    "wrong type": ({"depth": "1, 2, 2"}, "depth must be a list of 1 to 8 integers"),
    "nested": ({"depth": [[[1]], 2, 2]}, "depth must be a list of integers"),
    "too many weights": (
        {"embed_dim": [4096, 8192, 16384], "num_heads": [1, 1, 1], "depth": [8, 8, 64]},
        r"the declared architecture has [\d,]+ weights, more than the 1,000,000,000",
    ),
    "huge kernel": ({"kernel_qkv": 10**6}, "kernel_qkv must be an integer from 1 to 63"),
    "label key with a leading zero": ({"id2label": {"0": "a", "01": "b"}}, "id2label key '01' is not a class number"),
    "label not a string": ({"id2label": {"0": "a", "1": None}}, r"id2label\['1'\] must be a class name \(a string\), got None"),
    "label a list": ({"id2label": {"0": "a", "1": ["b"]}}, r"id2label\['1'\] must be a class name"),
    "drop path not a number": ({"drop_path_rate": "x"}, "drop_path_rate must be numbers from 0 to 1"),
}


@pytest.mark.parametrize("case", HOSTILE_CONFIGS)
def test_hostile_config_is_refused_by_field_before_any_weights_are_requested(fake_hub, tiny_files, case):
    import resource

    change, words = HOSTILE_CONFIGS[case]
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, config=tiny_config(**change))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=rf"^config\.json of hf://{REPO}: {words}"):
        keras_cvt.from_hf(f"hf://{REPO}")
    assert [path for _, path, _, _ in fake_hub.requests if not path.endswith("/config.json")] == []
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing built


@pytest.mark.parametrize(
    "text, words",
    [("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"), ('{"model_type": "cvt", "depth": [1', "not a JSON file"), ("", "not a JSON file")],
    ids=["deeply nested", "truncated", "empty"],
)
def test_hostile_config_file_is_refused_naming_it(fake_hub, tiny_files, text, words):
    commit = fake_hub.add(REPO, "main", tiny_files["model.safetensors"], filename="model.safetensors").commit
    fake_hub.add(REPO, "main", text.encode(), etag="git", filename="config.json", commit=commit)
    with pytest.raises(ValueError, match=rf"^config\.json of hf://{REPO}: {words}"):
        keras_cvt.from_hf(f"hf://{REPO}")
    assert [path for _, path, _, _ in fake_hub.requests if not path.endswith("/config.json")] == []


def test_oversized_config_file_is_refused_unread(fake_hub, tiny_files):
    # 20 MB of labels: a valid config, but more than a config may be.
    config = tiny_config(id2label={str(i): "x" * 16 for i in range(600_000)})
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, config=config)
    with pytest.raises(ValueError, match=rf"^config\.json of hf://{REPO}: [\d,]+ bytes, more than the 16,777,216"):
        keras_cvt.from_hf(f"hf://{REPO}")


def test_weights_that_contradict_the_config_are_refused_before_a_model_is_built(fake_hub, tiny_files, monkeypatch):
    # config.json claims 10 blocks in the last stage; the tensors have 2.
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, config=tiny_config(depth=[1, 2, 10]))
    built = []
    monkeypatch.setattr(keras_cvt.variants, "CvT", lambda **kwargs: built.append(kwargs))
    with pytest.raises(ValueError, match=r"(?s)does not fit the architecture its config declares: \d+ problem.*missing: stage2\.blocks\.2\."):
        keras_cvt.from_hf(f"hf://{REPO}")
    assert built == []


def test_a_classifier_that_contradicts_the_labels_is_refused_before_a_model_is_built(fake_hub, tiny_files, monkeypatch):
    # The classifier's width is the labels' count: 3 labels for a 10-class head.
    built = []
    monkeypatch.setattr(keras_cvt.variants, "CvT", lambda **kwargs: built.append(kwargs))
    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]}, config=tiny_config(id2label={0: "a", 1: "b", 2: "c"}))
    with pytest.raises(ValueError, match=r"misshapen: head\.weight is \(10, 48\), expected \(3, 48\)"):
        keras_cvt.from_hf(f"hf://{REPO}")
    assert built == []


def test_id2label_takes_python_int_keys_and_refuses_gaps_and_negatives():
    assert hf_config.read(tiny_config(id2label={1: "b", 0: "a"})).labels == ("a", "b")
    for id2label in ({-1: "a", 0: "b"}, {"0": "a", " 1": "b"}, {"0": "a", "١": "b"}):
        with pytest.raises(ValueError, match="id2label key .* is not a class number"):
            hf_config.read(tiny_config(id2label=id2label), source="config.json")


def test_read_only_hub_cache_is_one_error_naming_it_without_retries(fake_hub, tiny_files, tmp_path, monkeypatch):
    import huggingface_hub

    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]})
    # Permission bits do not stop root; sysfs refuses new entries to everyone.
    read_only = "/sys/hf-cache" if os.geteuid() == 0 else tmp_path / "read-only-hf"
    if os.geteuid() != 0:
        read_only.mkdir()
        read_only.chmod(0o555)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(read_only))
    with pytest.raises(downloads.HubError, match=rf"huggingface_hub's cache cannot be written at {read_only}") as error:
        keras_cvt.from_hf(f"hf://{REPO}")
    assert "weights_conversion" not in str(error.value) and "failed" not in str(error.value)
    assert len(fake_hub.get_requests(f"/{REPO}/resolve/")) <= 1


def test_offline_with_converted_weights_but_no_hub_cache_names_what_is_missing(fake_hub, tiny_files, tmp_path, monkeypatch):
    import huggingface_hub

    publish(fake_hub, {"model.safetensors": tiny_files["model.safetensors"]})
    keras_cvt.from_hf(f"hf://{REPO}", include_preprocessing=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "emptied"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests = len(fake_hub.requests)
    with pytest.raises(downloads.OfflineError, match=r"its weights were converted here .* but config\.json, which gives the architecture and labels, is missing") as error:
        keras_cvt.from_hf(f"hf://{REPO}")
    assert f"hf download {REPO} config.json" in str(error.value)
    assert "weights_conversion" not in str(error.value)
    assert len(fake_hub.requests) == requests
