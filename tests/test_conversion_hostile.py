"""The converter under hostile and damaged input: what it checks before allocating, the dtypes
it upcasts, and the one-line refusals of the command line, which leave nothing behind."""

import json
import os
import re
import shutil
import struct

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from keras_cvt import conversion as weights_conversion
from keras_cvt import CvT
from tests.conftest import FIXTURES, TINY_CONFIG, assert_same_weights_files

# The fixtures tiny_state and out_dir, and the helpers, are test_conversion's.
from tests.test_conversion import TINY, Payload, _run_python, out_dir, tiny_state  # noqa: F401
from keras_cvt.conversion import CheckpointMismatchError, convert
from keras_cvt.conversion.__main__ import main
from keras_cvt.conversion.mapping import expected_shapes, torch_shape, variable_map

TF_H5 = FIXTURES / "hf_tiny_tf_model.h5"
# A head this wide is 1.9 GB of float32 per copy; the files below claim it in under 1 MB.
CLAIMED_CLASSES = 10_000_000
# What refusing the files may add to the converter's peak memory (the baseline, after one
# real conversion, is TensorFlow's, Keras' and PyTorch's own).
ALLOWED_GROWTH_MB = 256


# --- Claims larger than the file --------------------------------------------------------------


def _expanded_head_pth(tiny_state, path):
    """A state dict whose head is a stride-0 view: 10 million classes over 192 stored bytes."""
    state = dict(tiny_state)
    width = state["head.weight"].shape[1]
    state["head.weight"] = torch.zeros(1, width).expand(CLAIMED_CLASSES, width)
    state["head.bias"] = torch.zeros(1).expand(CLAIMED_CLASSES)
    torch.save(state, path)
    return path


def _forged_header_safetensors(tiny_state, path):
    """A safetensors file whose header gives the head 10 million rows and its true offsets."""
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, path)
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header["head.weight"]["shape"][0] = CLAIMED_CLASSES
    forged = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(forged)) + forged + raw[8 + size :])
    return path


def _sparse_kernel_tf_h5(_, path):
    """HuggingFace's tf_model.h5 whose classifier kernel is a chunked dataset never written:
    HDF5 stores no chunk and reads back 1.9 GB of fill values."""
    shutil.copyfile(TF_H5, path)
    with h5py.File(path, "r+") as h5:
        group = h5["classifier"]
        (name,) = [n for n in group.attrs["weight_names"] if str(n).endswith("kernel:0")]
        name = name.decode() if isinstance(name, bytes) else name
        width = group[name].shape[0]
        del group[name]
        group.create_dataset(name, shape=(width, CLAIMED_CLASSES), dtype="float32", chunks=(width, 4096))
    return path


HOSTILE = {
    "expanded_view.pth": (
        _expanded_head_pth,
        r"claims \d+ bytes of tensors but stores \d+: head\.weight is \(10000000, 48\)",
    ),
    "forged_header.safetensors": (_forged_header_safetensors, r"cannot read .* as a safetensors checkpoint"),
    "sparse_kernel_tf_model.h5": (
        _sparse_kernel_tf_h5,
        r"classifier/kernel:0 is \(48, 10000000\) \(1920000000 bytes\) but the file stores 0",
    ),
}

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
# pytest process holding 3 GB would report 3 GB and hide an allocation below that.
PEAK_SCRIPT = """
import json, re, sys
from keras_cvt.conversion import convert

def peak_mb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) / 1024

out, tiny, *hostile = sys.argv[1:]
convert(tiny, out)  # so that the libraries' own memory is in the baseline
report = {"baseline_mb": peak_mb(), "errors": {}, "peak_mb": {}}
for path in hostile:
    try:
        convert(path, out)
        report["errors"][path] = None
    except ValueError as error:
        report["errors"][path] = str(error)
    report["peak_mb"][path] = peak_mb()
print(json.dumps(report))
"""


@pytest.mark.slow
def test_claims_larger_than_the_file_are_refused_in_bounded_memory(tiny_state, tmp_path, out_dir):
    paths = []
    for name, (make, _) in HOSTILE.items():
        path = tmp_path / name
        make(tiny_state, path)
        assert path.stat().st_size < 1_000_000
        paths.append(str(path))
    result = _run_python("-c", PEAK_SCRIPT, str(out_dir / "x.weights.h5"), str(TINY), *paths)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for path, (_, message) in zip(paths, HOSTILE.values()):
        error = report["errors"][path]
        assert error is not None, f"{path} converted"
        assert repr(path) in error and "\n" not in error
        assert re.search(message, error), error
        growth = report["peak_mb"][path] - report["baseline_mb"]
        assert growth < ALLOWED_GROWTH_MB, f"{path}: peak memory grew by {growth:.0f} MB"
    assert report["peak_mb"][paths[-1]] < 1536, report
    # Only the warm-up's file.
    assert os.listdir(out_dir) == ["x.weights.h5"]


def test_an_expanded_view_is_refused_before_any_model_is_built(tiny_state, tmp_path, out_dir, monkeypatch):
    built = []
    monkeypatch.setattr("keras_cvt.conversion.CvT", lambda *a, **k: built.append(k))
    with pytest.raises(ValueError, match=HOSTILE["expanded_view.pth"][1]):
        convert(_expanded_head_pth(tiny_state, tmp_path / "x.pth"), out_dir / "x.weights.h5")
    assert built == []
    assert os.listdir(out_dir) == []


def test_gaps_in_block_numbers_are_refused_without_listing_them(tiny_state, tmp_path, out_dir):
    """A block numbered 99999999 would otherwise make the converter expect 3 billion tensors."""
    state = dict(tiny_state)
    state["stage2.blocks.99999999.norm1.weight"] = torch.zeros(48)
    checkpoint = tmp_path / "gap.pth"
    torch.save(state, checkpoint)
    with pytest.raises(ValueError) as caught:
        convert(checkpoint, out_dir / "x.weights.h5")
    message = str(caught.value)
    assert message == (
        f"checkpoint {str(checkpoint)!r}: stage2 numbers its blocks up to 99999999 but holds 3 of them "
        "(no tensors for block 2, 3, 4, 5, 6 and 99999992 more)"
    )
    assert os.listdir(out_dir) == []


# --- The arithmetic the checks rely on ----------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        TINY_CONFIG,
        {
            "depths": (2, 1),
            "embed_dims": (8, 24),
            "num_heads": (1, 1),
            "classes": 3,
            "mlp_ratio": 2.0,
            "patch_sizes": (5, 3),
            "patch_strides": (4, 2),
            "patch_paddings": (2, 1),
        },
        {
            "depths": (1, 1, 1, 2),
            "embed_dims": (8, 16, 24, 32),
            "num_heads": (1, 1, 1, 1),
            "classes": 7,
            "mlp_ratio": 3.0,
            "patch_sizes": (7, 3, 3, 3),
            "patch_strides": (4, 2, 2, 2),
            "patch_paddings": (2, 1, 1, 1),
        },
    ],
    ids=["tiny", "two_stages_mlp2", "four_stages_mlp3"],
)
def test_expected_shapes_are_what_the_built_model_loads(config):
    model = CvT(**config, weights=None, include_preprocessing=False, input_shape=(None, None, 3))
    built = {key: torch_shape(variable, permutation) for key, (variable, permutation) in variable_map(model).items()}
    assert expected_shapes(config) == built


# --- Dtypes ---------------------------------------------------------------------------------


def _rounded_through(state, dtype):
    return {k: v.to(dtype).to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}


def _in_dtype(state, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize(
    "dtype, suffix",
    [
        (torch.bfloat16, ".pth"),
        (torch.float16, ".pth"),
        (torch.bfloat16, ".safetensors"),
        (torch.float16, ".safetensors"),
    ],
    ids=["bfloat16_pth", "float16_pth", "bfloat16_safetensors", "float16_safetensors"],
)
def test_half_precision_checkpoints_convert_as_their_float32_rounding(
    dtype, suffix, tiny_state, tiny_reference, tmp_path
):
    """The weights are the float32 values of the half-precision ones, bit for bit."""
    half = tmp_path / f"half{suffix}"
    if suffix == ".pth":
        torch.save(_in_dtype(tiny_state, dtype), half)
    else:
        save_file(_in_dtype(tiny_state, dtype), half)
    rounded = tmp_path / "rounded.pth"
    torch.save(_rounded_through(tiny_state, dtype), rounded)
    convert(half, tmp_path / "half.weights.h5")
    convert(rounded, tmp_path / "rounded.weights.h5")
    assert_same_weights_files(tmp_path / "half.weights.h5", tmp_path / "rounded.weights.h5")
    # The rounding happened: the full-precision conversion differs.
    with pytest.raises(AssertionError):
        assert_same_weights_files(tmp_path / "half.weights.h5", tiny_reference[0])


@pytest.mark.slow
def test_bfloat16_logits_are_those_of_the_rounded_weights(tiny_state, tiny_reference, tmp_path):
    _, x, full_logits = tiny_reference
    torch.save(_in_dtype(tiny_state, torch.bfloat16), tmp_path / "bf16.pth")
    torch.save(_rounded_through(tiny_state, torch.bfloat16), tmp_path / "rounded.pth")
    logits = {}
    for name in ("bf16", "rounded"):
        convert(tmp_path / f"{name}.pth", tmp_path / f"{name}.weights.h5")
        model = CvT(
            **TINY_CONFIG,
            weights=tmp_path / f"{name}.weights.h5",
            input_shape=(None, None, 3),
            include_preprocessing=False,
            classifier_activation=None,
        )
        logits[name] = model.predict(x, verbose=0)
    assert np.abs(logits["bf16"] - logits["rounded"]).max() <= 1e-4
    # bfloat16 keeps 8 bits of mantissa: close to, and measurably off, the float32 logits.
    assert 1e-4 < np.abs(logits["bf16"] - full_logits).max() < 0.1 * np.abs(full_logits).max()


NOT_FLOAT = {
    "int64_pth": (
        ".pth",
        "stage1.blocks.0.attn.proj.weight",
        torch.int64,
        "(32, 32) holds int64 values, expected floating point",
    ),
    "bool_pth": (".pth", "norm.weight", torch.bool, "(48,) holds bool values, expected floating point"),
    "int32_safetensors": (
        ".safetensors",
        "norm.bias",
        torch.int32,
        "(48,) holds int32 values, expected floating point",
    ),
    "complex32_pth": (
        ".pth",
        "norm.bias",
        torch.complex32,
        "(48,) has dtype torch.complex32, which is not a floating-point type NumPy can hold",
    ),
    "float8_safetensors": (
        ".safetensors",
        "head.weight",
        torch.float8_e4m3fn,
        "has dtype F8_E4M3, which this converter does not read (weights must be F64, F32, F16 or BF16)",
    ),
}


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")
@pytest.mark.parametrize("kind", sorted(NOT_FLOAT))
def test_weights_of_a_non_float_dtype_are_refused(kind, tiny_state, tmp_path, out_dir):
    suffix, key, dtype, message = NOT_FLOAT[kind]
    state = {k: v.contiguous() for k, v in tiny_state.items()}
    state[key] = state[key].to(dtype)
    checkpoint = tmp_path / f"{kind}{suffix}"
    (torch.save if suffix == ".pth" else save_file)(state, checkpoint)
    with pytest.raises(ValueError) as caught:
        convert(checkpoint, out_dir / "x.weights.h5")
    assert str(caught.value) == f"checkpoint {str(checkpoint)!r}: {key} {message}"
    assert os.listdir(out_dir) == []


# --- Ranks, empty tensors and values -----------------------------------------------------------


def _replace(key, value):
    return lambda state: {**state, key: value}


DAMAGED = {
    "head_0d": (
        _replace("head.weight", torch.tensor(1.0)),
        "head.weight is (), expected a non-empty 2-D tensor (classes, width)",
    ),
    "head_1d": (
        _replace("head.weight", torch.zeros(10)),
        "head.weight is (10,), expected a non-empty 2-D tensor (classes, width)",
    ),
    "head_empty": (
        _replace("head.weight", torch.zeros(0, 48)),
        "head.weight is (0, 48), expected a non-empty 2-D tensor (classes, width)",
    ),
    "fc1_1d": (
        _replace("stage0.blocks.0.mlp.fc1.weight", torch.zeros(64)),
        "stage0.blocks.0.mlp.fc1.weight is (64,), expected a non-empty 2-D tensor (hidden, width)",
    ),
    "fc1_empty": (
        _replace("stage0.blocks.0.mlp.fc1.weight", torch.zeros(64, 0)),
        "stage0.blocks.0.mlp.fc1.weight is (64, 0), expected a non-empty 2-D tensor (hidden, width)",
    ),
    "embedding_2d": (
        _replace("stage1.patch_embed.proj.weight", torch.zeros(32, 16)),
        "stage1.patch_embed.proj.weight is (32, 16), expected a non-empty 4-D tensor (out, in, kh, kw)",
    ),
    "projection_1d": (
        _replace("stage1.blocks.1.attn.proj_k.weight", torch.zeros(32)),
        "does not fit the inferred architecture: misshapen: stage1.blocks.1.attn.proj_k.weight is (32,), expected (32, 32)",
    ),
    "bias_empty": (
        _replace("stage2.blocks.0.mlp.fc2.bias", torch.zeros(0)),
        "does not fit the inferred architecture: misshapen: stage2.blocks.0.mlp.fc2.bias is (0,), expected (48,)",
    ),
    "cls_token_0d": (
        _replace("stage2.cls_token", torch.tensor(0.5)),
        "does not fit the inferred architecture: misshapen: stage2.cls_token is (), expected (1, 1, 48)",
    ),
    "stage_without_blocks": (
        lambda s: {k: v for k, v in s.items() if not k.startswith("stage1.blocks.")},
        "stage1 has no blocks: no tensors stage1.blocks.0.*",
    ),
    "nan": (
        lambda s: {
            **s,
            "stage1.blocks.0.mlp.fc2.weight": s["stage1.blocks.0.mlp.fc2.weight"].index_fill(
                1, torch.tensor([3]), float("nan")
            ),
        },
        "stage1.blocks.0.mlp.fc2.weight (32, 128) holds 32 NaN or infinite value(s)",
    ),
    "inf": (
        _replace("norm.bias", torch.tensor([float("inf")] + [0.0] * 47)),
        "norm.bias (48,) holds 1 NaN or infinite value(s)",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_tensor_gets_one_line_naming_file_tensor_and_shape(kind, tiny_state, tmp_path, out_dir):
    damage, message = DAMAGED[kind]
    checkpoint = tmp_path / f"{kind}.pth"
    torch.save(damage(dict(tiny_state)), checkpoint)
    with pytest.raises(ValueError) as caught:
        convert(checkpoint, out_dir / "x.weights.h5")
    text = str(caught.value)
    assert text.startswith(f"checkpoint {str(checkpoint)!r}")
    assert text.endswith(message)
    assert "\n" not in text
    assert os.listdir(out_dir) == []


# --- The command line: one line, status 1, nothing left behind ----------------------------------


def _truncated(source, suffix, keep):
    def make(tmp_path, tiny_state):
        path = tmp_path / f"truncated{suffix}"
        data = source(tmp_path, tiny_state).read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return make


def _written(name, content):
    def make(tmp_path, tiny_state):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    return make


def _safetensors(tmp_path, tiny_state):
    path = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, path)
    return path


def _damaged_metadata(tmp_path, _):
    """tf_model.h5 with 2 KB overwritten just past the superblock: it opens, and its name lists
    (HDF5's global heap) no longer read."""
    data = bytearray(TF_H5.read_bytes())
    start = len(data) // 500
    data[start : start + 2048] = b"\xff" * 2048
    path = tmp_path / "damaged_tf_model.h5"
    path.write_bytes(bytes(data))
    return path


BAD_INPUTS = {
    "missing": (lambda tmp_path, _: tmp_path / "nowhere.pth", "checkpoint not found"),
    "random_bytes": (
        _written("random.pth", np.random.RandomState(0).bytes(4096)),
        "cannot read .* as a PyTorch checkpoint",
    ),
    "text_file": (_written("notes.bin", b"a text file\nwith two lines\n"), "cannot read .* as a PyTorch checkpoint"),
    "truncated_pth": (_truncated(lambda *_: TINY, ".pth", 0.5), "cannot read .* as a PyTorch checkpoint"),
    "truncated_safetensors": (
        _truncated(_safetensors, ".safetensors", 0.9),
        "cannot read .* as a safetensors checkpoint",
    ),
    "damaged_tf_model_h5": (_damaged_metadata, r"cannot read .* as a HuggingFace tf_model\.h5: .*bad global heap"),
    "truncated_tf_model_h5": (
        _truncated(lambda *_: TF_H5, ".h5", 0.6),
        r"cannot read .* as an HDF5 file: .*truncated file",
    ),
}


def _bad_output(kind, tmp_path):
    """An output path of `kind`, and the directory whose listing must not change."""
    if kind == "existing_directory":
        path = tmp_path / "taken.weights.h5"
        path.mkdir()
        return path, tmp_path
    if kind == "parent_is_a_file":
        (tmp_path / "plain_file").write_text("x")
        return tmp_path / "plain_file" / "x.weights.h5", tmp_path
    # Permission bits do not stop root; sysfs refuses new entries to everyone.
    if os.geteuid() == 0:
        return "/sys/x.weights.h5", "/sys"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "x.weights.h5", locked


BAD_OUTPUTS = {
    "existing_directory": "is an existing directory, expected a file path",
    "parent_is_a_file": "is not a directory",
    "unwritable": "cannot write `output_path`",
}


def _listing(directory):
    return sorted((root, tuple(sorted(dirs)), tuple(sorted(files))) for root, dirs, files in os.walk(directory))


# TensorFlow's C++ start-up logs (oneDNN, CUDA stubs), which abseil writes at `import
# tensorflow` whatever TF_CPP_MIN_LOG_LEVEL says; not the converter's output.
TF_STARTUP_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} )")


def _assert_one_line_error(stderr, pattern):
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not TF_STARTUP_LOG.match(line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_cli_refuses_a_bad_input_in_one_line(kind, tiny_state, tmp_path, out_dir, capsys):
    make, pattern = BAD_INPUTS[kind]
    path = make(tmp_path, tiny_state)
    before = _listing(tmp_path)
    assert main([str(path), str(out_dir / "x.weights.h5")]) == 1
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, pattern)
    assert repr(str(path)) in captured.err
    assert captured.out == ""
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_cli_refuses_a_bad_output_before_reading_the_checkpoint(kind, tmp_path, capsys, monkeypatch):
    output, watched = _bad_output(kind, tmp_path)
    before = _listing(watched)
    read = []
    monkeypatch.setattr(weights_conversion, "read_checkpoint", lambda path: read.append(path))
    assert main([str(TINY), str(output)]) == 1
    _assert_one_line_error(capsys.readouterr().err, BAD_OUTPUTS[kind])
    assert read == []
    assert _listing(watched) == before


def test_cli_reports_a_failed_write_in_one_line(tmp_path, out_dir, capsys, monkeypatch):
    import keras

    def full_disk(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    assert main([str(TINY), str(out_dir / "x.weights.h5")]) == 1
    _assert_one_line_error(capsys.readouterr().err, r"could not write .*x\.weights\.h5: No space left on device \(ENOSPC\); nothing was written")
    assert os.listdir(out_dir) == []


@pytest.mark.slow
def test_cli_process_exits_1_with_one_line(tmp_path):
    """The same through `python -m keras_cvt.conversion`: exit status 1, no traceback."""
    output, watched = _bad_output("existing_directory", tmp_path)
    before = _listing(watched)
    result = _run_python("-m", "keras_cvt.conversion", str(TINY), str(output))
    assert result.returncode == 1
    _assert_one_line_error(result.stderr, BAD_OUTPUTS["existing_directory"])
    assert _listing(watched) == before


# --- Never unpickling code ----------------------------------------------------------------------


def test_a_legacy_format_pickle_with_code_is_refused_not_run(tiny_state, tmp_path, out_dir):
    """PyTorch's pre-1.6 (non-zip) format goes through the same weights_only unpickler."""
    marker = tmp_path / "marker.txt"
    checkpoint = tmp_path / "legacy.pth"
    torch.save(
        {"state_dict": tiny_state, "extra": Payload(str(marker))}, checkpoint, _use_new_zipfile_serialization=False
    )
    with pytest.raises(ValueError, match=r"objects other than tensors .*test_conversion\._leave_marker"):
        convert(checkpoint, out_dir / "x.weights.h5")
    assert not marker.exists()
    assert os.listdir(out_dir) == []
    # Control: the payload is live.
    torch.load(checkpoint, weights_only=False)
    assert marker.read_text() == "unpickled"


def test_a_legacy_format_checkpoint_converts(tiny_state, tiny_reference, tmp_path):
    checkpoint = tmp_path / "legacy.pth"
    torch.save(tiny_state, checkpoint, _use_new_zipfile_serialization=False)
    convert(checkpoint, tmp_path / "legacy.weights.h5")
    assert_same_weights_files(tmp_path / "legacy.weights.h5", tiny_reference[0])


def test_a_mismatch_with_several_problems_still_lists_them(tiny_state, tmp_path):
    state = dict(tiny_state)
    del state["head.bias"], state["norm.bias"]
    checkpoint = tmp_path / "two.pth"
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointMismatchError) as caught:
        convert(checkpoint, tmp_path / "x.weights.h5")
    assert str(caught.value).splitlines()[1:] == ["  missing: norm.bias (48,)", "  missing: head.bias (10,)"]
