"""The checkpoint converter: formats, inference of the architecture, refusals, CLI."""

import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import torch
from transformers import CvtConfig, CvtForImageClassification

from keras_cvt import conversion as weights_conversion
from keras_cvt import CvT
from tests.conftest import FIXTURES, ROOT, TINY_CONFIG, assert_same_weights_files, reference_file, weights_file_arrays
from keras_cvt.conversion import CheckpointMismatchError, convert, hf_to_original_key

TINY = FIXTURES / "cvt_tiny_official_perturbed.pth"
CVT13 = "cvt13_official_perturbed.pth"  # of the reference: reference_file(CVT13)


def _official_keys(variant):
    """{key: shape} of an original state dict, from the reference's key lists."""
    keys = {}
    for line in reference_file(f"{variant}_official_keys.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        keys[key] = shape
    return keys


@pytest.fixture(scope="module")
def tiny_state():
    return torch.load(TINY, map_location="cpu", weights_only=True)


@pytest.fixture
def out_dir(tmp_path):
    """An empty directory for conversion outputs, to see what a conversion leaves there."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def _subprocess_env():
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run_python(*args):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=300
    )


def _tiny_logits(weights, x):
    model = CvT(
        **TINY_CONFIG,
        weights=weights,
        input_shape=(None, None, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    return model.predict(x, verbose=0)


# --- Checkpoint layouts -------------------------------------------------------------------


def _with_parameters(state):
    return {k: torch.nn.Parameter(v, requires_grad=v.is_floating_point()) for k, v in state.items()}


LAYOUTS = {
    "state_dict": lambda s: {"state_dict": s},
    "model": lambda s: {"model": s},
    "module_prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "state_dict_module_prefix": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    # What microsoft/CvT's training loop saves: `model` there is the model's name.
    "training_checkpoint": lambda s: {"epoch": 300, "model": "cls_cvt", "state_dict": s, "perf": 81.6},
    "without_num_batches_tracked": lambda s: {k: v for k, v in s.items() if not k.endswith("num_batches_tracked")},
    "parameters": _with_parameters,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_layouts_convert_to_identical_weights(layout, tiny_state, tiny_reference, tmp_path):
    reference_path, _, _ = tiny_reference
    checkpoint = tmp_path / "wrapped.pth"
    torch.save(LAYOUTS[layout](tiny_state), checkpoint)
    out = tmp_path / "wrapped.weights.h5"
    info = convert(checkpoint, out)
    assert info["variant"] is None
    n_tensors = sum(1 for k in tiny_state if not k.endswith("num_batches_tracked"))
    assert info["tensors"] == len(weights_file_arrays(reference_path)) == n_tensors
    assert_same_weights_files(out, reference_path)


def test_plain_tiny_checkpoint_reproduces_its_logits(tiny_reference):
    """The baseline the layouts are compared with is itself right."""
    path, x, logits = tiny_reference
    assert np.abs(_tiny_logits(path, x) - logits).max() <= 1e-4


# --- Inferring the architecture -------------------------------------------------------------


def test_cvt13_reference_is_inferred_as_cvt13(cvt13_reference, tmp_path):
    out = tmp_path / "inferred.weights.h5"
    info = convert(reference_file(CVT13), out)
    assert info["variant"] == "cvt13"
    assert info["config"]["depths"] == (1, 2, 10)
    assert info["config"]["embed_dims"] == (64, 192, 384)
    assert info["config"]["num_heads"] == (1, 3, 6)
    assert info["config"]["classes"] == 1000
    # The same file as with model="cvt13" (conftest's conversion).
    assert_same_weights_files(out, cvt13_reference[0])


def test_tiny_checkpoint_is_inferred_as_custom(tmp_path):
    info = convert(TINY, tmp_path / "tiny.weights.h5")
    assert info["variant"] is None
    config = info["config"]
    assert config["depths"] == TINY_CONFIG["depths"]
    assert config["embed_dims"] == TINY_CONFIG["embed_dims"]
    assert config["classes"] == TINY_CONFIG["classes"]
    assert config["mlp_ratio"] == 4.0
    assert config["patch_sizes"] == (7, 3, 3)
    # Heads leave no trace in the weights: the reported config builds a model the file loads into.
    model = CvT(**config, weights=tmp_path / "tiny.weights.h5", include_preprocessing=False)
    assert model.count_params() == CvT(**TINY_CONFIG, include_preprocessing=False).count_params()


# --- Refusals -------------------------------------------------------------------------------


def test_wrong_variant_is_refused_with_the_missing_tensors(out_dir):
    keys13, keys21 = _official_keys("cvt13"), _official_keys("cvt21")
    expected = {
        f"missing: {key} {shape}"
        for key, shape in keys21.items()
        if key not in keys13 and not key.endswith("num_batches_tracked")
    }
    assert len(expected) == 248  # 8 more blocks of 31 tensors each
    with pytest.raises(CheckpointMismatchError) as caught:
        convert(reference_file(CVT13), out_dir / "cvt21.weights.h5", model="cvt21")
    assert set(caught.value.problems) == expected
    assert len(caught.value.problems) == len(expected)
    message = str(caught.value)
    assert f"{len(expected)} problem(s)" in message
    assert f"... and {len(expected) - weights_conversion._MAX_REPORTED} more" in message
    assert os.listdir(out_dir) == []


def test_missing_unexpected_and_misshapen_tensors_are_each_reported(tiny_state, tmp_path, out_dir):
    state = dict(tiny_state)
    del state["stage1.blocks.1.mlp.fc2.bias"]
    state["stage0.blocks.0.attn.extra.weight"] = torch.zeros(3)
    state["stage0.blocks.0.mlp.fc1.bias"] = torch.zeros(65)
    checkpoint = tmp_path / "broken.pth"
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointMismatchError) as caught:
        convert(checkpoint, out_dir / "broken.weights.h5")
    assert sorted(caught.value.problems) == [
        "misshapen: stage0.blocks.0.mlp.fc1.bias is (65,), expected (64,)",
        "missing: stage1.blocks.1.mlp.fc2.bias (32,)",
        "unexpected: stage0.blocks.0.attn.extra.weight (3,)",
    ]
    assert os.listdir(out_dir) == []


def test_failed_conversion_keeps_an_existing_output(tmp_path):
    out = tmp_path / "existing.weights.h5"
    out.write_bytes(b"previous contents")
    with pytest.raises(CheckpointMismatchError):
        convert(TINY, out, model="cvt13")
    assert out.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["existing.weights.h5"]


def test_conversion_replaces_an_existing_output(tmp_path, tiny_reference):
    out = tmp_path / "existing.weights.h5"
    out.write_bytes(b"previous contents")
    convert(TINY, out)
    assert_same_weights_files(out, tiny_reference[0])
    assert sorted(os.listdir(tmp_path)) == ["existing.weights.h5"]


def test_a_failure_while_writing_leaves_no_file(monkeypatch, out_dir):
    def failing_save_weights(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", failing_save_weights)
    with pytest.raises(OSError, match="disk full"):
        convert(TINY, out_dir / "tiny.weights.h5")
    assert os.listdir(out_dir) == []


def test_output_file_gets_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        convert(TINY, tmp_path / "tiny.weights.h5")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "tiny.weights.h5").st_mode) == 0o644


@pytest.mark.parametrize("name", ["tiny.h5", "tiny.keras", "tiny.weights.h5.tmp", "tiny"])
def test_output_path_must_end_in_weights_h5(name, out_dir):
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        convert(TINY, out_dir / name)
    assert os.listdir(out_dir) == []


def test_missing_input_file(tmp_path, out_dir):
    with pytest.raises(ValueError, match="not found"):
        convert(tmp_path / "nowhere.pth", out_dir / "x.weights.h5")
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("model", ["cvt99", "CvT13", "cvt-13", ""])
def test_unknown_model_name(model, out_dir):
    with pytest.raises(ValueError, match="`model` must be one of"):
        convert(TINY, out_dir / "x.weights.h5", model=model)
    assert os.listdir(out_dir) == []


def _write_foreign(kind, path_stem, tiny_state):
    """Writes a file that is not a CvT checkpoint; returns its path."""
    if kind == "other_tensors":
        path = path_stem.with_suffix(".pth")
        torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, path)
    elif kind == "bare_tensor":
        path = path_stem.with_suffix(".pth")
        torch.save(torch.zeros(3), path)
    elif kind == "no_classifier":
        path = path_stem.with_suffix(".pth")
        torch.save({k: v for k, v in tiny_state.items() if not k.startswith("head.")}, path)
    elif kind == "garbage_pth":
        path = path_stem.with_suffix(".pth")
        path.write_bytes(b"this is not a checkpoint at all")
    elif kind == "random_bytes_bin":
        path = path_stem.with_suffix(".bin")
        path.write_bytes(np.random.RandomState(0).bytes(1000))
    elif kind == "truncated_pth":
        path = path_stem.with_suffix(".pth")
        path.write_bytes(TINY.read_bytes()[:5000])
    elif kind == "numpy_pickle":
        path = path_stem.with_suffix(".pth")
        with open(path, "wb") as f:
            pickle.dump({"stage0.patch_embed.proj.weight": np.zeros((16, 3, 7, 7), "float32")}, f, protocol=2)
    elif kind == "garbage_safetensors":
        path = path_stem.with_suffix(".safetensors")
        path.write_bytes(b"this is not a checkpoint at all")
    elif kind == "unknown_extension":
        path = path_stem.with_suffix(".npz")
        np.savez(path, x=np.zeros(3))
    return path


FOREIGN = {
    "other_tensors": "not a CvT checkpoint",
    "bare_tensor": "holds a Tensor, expected a state dict",
    "no_classifier": "head.weight is missing",
    "garbage_pth": "cannot read .* as a PyTorch checkpoint",
    "random_bytes_bin": "cannot read .* as a PyTorch checkpoint",
    "truncated_pth": "cannot read .* as a PyTorch checkpoint",
    "numpy_pickle": r"objects other than tensors and plain containers \(numpy\.",
    "garbage_safetensors": "cannot read .* as a safetensors checkpoint",
    "unknown_extension": "unknown checkpoint format",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_a_file_that_is_not_a_cvt_checkpoint_gives_a_clear_value_error(kind, tiny_state, tmp_path, out_dir):
    path = _write_foreign(kind, tmp_path / kind, tiny_state)
    with pytest.raises(ValueError, match=FOREIGN[kind]) as caught:
        convert(path, out_dir / "x.weights.h5")
    assert not isinstance(caught.value, CheckpointMismatchError)
    assert os.listdir(out_dir) == []


# --- Never unpickling code ------------------------------------------------------------------


def _leave_marker(path):
    """What the malicious pickle below runs when it is loaded without weights_only."""
    with open(path, "w") as f:
        f.write("unpickled")
    return "payload"


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _leave_marker, (self.marker,)


def test_torch_load_is_only_called_with_weights_only(monkeypatch, tmp_path):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    convert(TINY, tmp_path / "tiny.weights.h5")
    assert len(calls) == 1
    assert calls[0].get("weights_only") is True


def test_a_pickle_with_code_is_refused_not_run(tiny_state, tmp_path, out_dir):
    marker = tmp_path / "marker.txt"
    checkpoint = tmp_path / "malicious.pth"
    torch.save({"state_dict": tiny_state, "extra": Payload(str(marker))}, checkpoint)
    with pytest.raises(ValueError, match="objects other than tensors") as caught:
        convert(checkpoint, out_dir / "x.weights.h5")
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    assert "(tests.test_conversion._leave_marker)" in str(caught.value)
    # torch's advice to retry with weights_only=False is not passed on.
    assert "weights_only` set to `False`" not in str(caught.value)
    assert not marker.exists()
    assert os.listdir(out_dir) == []
    # Control: the payload is live, so its absence above is weights_only's doing.
    assert torch.load(checkpoint, weights_only=False)["extra"] == "payload"
    assert marker.read_text() == "unpickled"


# --- Command line ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_converts_and_the_file_loads(tiny_reference, tmp_path):
    out = tmp_path / "cli.weights.h5"
    result = _run_python("-m", "weights_conversion", str(TINY), str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    _, x, logits = tiny_reference
    assert np.abs(_tiny_logits(out, x) - logits).max() <= 1e-4


@pytest.mark.slow
def test_cli_reports_every_problem_and_writes_nothing(tiny_state, tmp_path, out_dir):
    state = dict(tiny_state)
    del state["stage1.blocks.1.mlp.fc2.bias"]
    state["stage0.blocks.0.attn.extra.weight"] = torch.zeros(3)
    checkpoint = tmp_path / "broken.pth"
    torch.save(state, checkpoint)
    result = _run_python("-m", "weights_conversion", str(checkpoint), str(out_dir / "x.weights.h5"))
    assert result.returncode == 1
    assert "2 problem(s)" in result.stderr
    assert "missing: stage1.blocks.1.mlp.fc2.bias (32,)" in result.stderr
    assert "unexpected: stage0.blocks.0.attn.extra.weight (3,)" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(out_dir) == []


def test_cli_model_option_reaches_the_converter(capsys, out_dir):
    from keras_cvt.conversion.__main__ import main

    assert main([str(TINY), str(out_dir / "x.weights.h5"), "--model", "cvt13"]) == 1
    stderr = capsys.readouterr().err
    assert "does not fit cvt13" in stderr
    assert "misshapen: stage0.patch_embed.proj.weight is (16, 3, 7, 7), expected (64, 3, 7, 7)" in stderr
    assert os.listdir(out_dir) == []
    with pytest.raises(SystemExit) as caught:
        main([str(TINY), str(out_dir / "x.weights.h5"), "--model", "cvt99"])
    assert caught.value.code == 2
    assert "invalid choice: 'cvt99'" in capsys.readouterr().err
    assert os.listdir(out_dir) == []


# --- HuggingFace checkpoints ----------------------------------------------------------------

HF_CONFIGS = {
    "cvt13": dict(embed_dim=[64, 192, 384], depth=[1, 2, 10], num_heads=[1, 3, 6], num_labels=1000),
    "cvt21": dict(embed_dim=[64, 192, 384], depth=[1, 4, 16], num_heads=[1, 3, 6], num_labels=1000),
    "cvtw24": dict(embed_dim=[192, 768, 1024], depth=[2, 2, 20], num_heads=[3, 12, 16], num_labels=1000),
}


@pytest.mark.parametrize("variant", sorted(HF_CONFIGS))
def test_hf_keys_map_one_to_one_onto_the_original_keys(variant):
    with torch.device("meta"):  # shapes only, no memory
        hf_state = CvtForImageClassification(CvtConfig(**HF_CONFIGS[variant])).state_dict()
    official = _official_keys(variant)
    mapped = {hf_to_original_key(key): key for key in hf_state}
    assert len(mapped) == len(hf_state) == len(official)
    assert sorted(mapped) == sorted(official)
    misshapen = [k for k, hf_key in mapped.items() if str(tuple(hf_state[hf_key].shape)) != official[k]]
    assert misshapen == []


@pytest.mark.slow
def test_hf_safetensors_converts_without_torch(tmp_path):
    """HF's model.safetensors needs no PyTorch; a .pth says clearly that it does."""
    torch.manual_seed(0)
    config = CvtConfig(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3], num_labels=10)
    hf = CvtForImageClassification(config)
    hf.save_pretrained(tmp_path / "hf")
    safetensors_file = tmp_path / "hf" / "model.safetensors"
    script = textwrap.dedent(
        """
        import json, sys

        # As if PyTorch were not installed: `import torch` raises ModuleNotFoundError. Not
        # `sys.modules["torch"] = None`: scipy, which Keras imports through scikit-learn when
        # that is installed, reads sys.modules["torch"].Tensor and crashes on None.
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        from keras_cvt.conversion import convert
        info = convert(sys.argv[1], sys.argv[2])
        try:
            convert(sys.argv[3], sys.argv[4])
            pth_error = None
        except ImportError as error:
            pth_error = str(error)
        torch_modules = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print(json.dumps({"tensors": info["tensors"], "pth_error": pth_error, "torch_modules": torch_modules}))
        """
    )
    out = tmp_path / "no_torch.weights.h5"
    result = _run_python("-c", script, str(safetensors_file), str(out), str(TINY), str(tmp_path / "pth.weights.h5"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch_modules"] == []
    assert report["tensors"] == sum(1 for k in hf.state_dict() if not k.endswith("num_batches_tracked"))
    assert report["pth_error"] is not None and "needs PyTorch" in report["pth_error"]
    assert not (tmp_path / "pth.weights.h5").exists()
    # The same file as converting with PyTorch at hand, and HF's weights in their places.
    with_torch = tmp_path / "with_torch.weights.h5"
    convert(safetensors_file, with_torch)
    assert_same_weights_files(out, with_torch)
    arrays = weights_file_arrays(out)
    head = hf.classifier.weight.detach().numpy().T
    assert sum(np.array_equal(a, head) for a in arrays.values()) == 1


def test_the_old_package_name_is_an_alias():
    import weights_conversion

    from keras_cvt import conversion

    assert weights_conversion.convert is conversion.convert
    assert weights_conversion.CheckpointMismatchError is conversion.CheckpointMismatchError
