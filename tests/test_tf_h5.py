"""HuggingFace's TensorFlow CvT weights (`tf_model.h5`), read with h5py alone.

The fixture is a real file written by transformers 4.57.6's own `TFCvtForImageClassification`
(tests/fixtures/make_hf_tf_h5.py); its logits come from the PyTorch twin with the original's
QuickGELU.
"""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import FIXTURES, ROOT
from keras_cvt.conversion import CheckpointMismatchError, convert, read_checkpoint

TF_H5 = FIXTURES / "hf_tiny_tf_model.h5"
IO = FIXTURES / "hf_tiny_tf_io.npz"
CONFIG = {"depths": (1, 2, 3), "embed_dims": (16, 32, 48), "num_heads": (1, 2, 3), "classes": 10}
# 3 embeddings of 4, 6 blocks of 31 (q/k/v: conv, 4 BatchNorm, Linear 2), class token, norm 2, head 2.
TENSORS = 3 * 4 + 6 * 31 + 1 + 2 + 2
TOLERANCE = 1e-4


def _weight_names(group):
    return [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]


def _dataset_ending(h5, layer, suffix):
    """The full in-file name of the one variable of `layer` ending in `suffix`."""
    (name,) = [n for n in _weight_names(h5[layer]) if n.endswith(suffix)]
    return name


def _datasets(path):
    """Every array of an h5 file, keyed by its path inside the file."""
    found = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp("tf_h5") / "tiny.weights.h5"
    info = convert(TF_H5, path)
    return path, info


def test_converts_and_reproduces_pytorch_logits(converted):
    from keras_cvt import CvT

    path, info = converted
    assert info["variant"] is None
    assert info["tensors"] == TENSORS
    assert {k: info["config"][k] for k in ("depths", "embed_dims", "classes")} == {
        k: CONFIG[k] for k in ("depths", "embed_dims", "classes")
    }
    io = np.load(IO)
    assert io["x"].shape == (2, 3, 64, 80)
    model = CvT(
        **CONFIG,
        weights=path,
        include_preprocessing=False,
        classifier_activation=None,
        input_shape=(None, None, 3),
    )
    out = model.predict(io["x"].transpose(0, 2, 3, 1), verbose=0)
    assert out.shape == io["logits"].shape == (2, 10)
    assert np.abs(out - io["logits"]).max() <= TOLERANCE


def test_reader_layouts_against_the_raw_datasets():
    """Each kind of variable comes back in PyTorch's layout, checked value by value."""
    state = read_checkpoint(TF_H5)
    assert len(state) == TENSORS
    with h5py.File(TF_H5, "r") as h5:

        def raw(layer, suffix):
            return h5[layer][_dataset_ending(h5, layer, suffix)][()]

        block = "stages.2/layers.1/"
        attn = block + "attention/attention/"
        conv_proj = attn + "convolution_projection_{}/convolution_projection/"
        depthwise = raw("cvt", conv_proj.format("value") + "convolution/kernel:0")  # [3, 3, 1, C]
        expected = {
            "stage1.patch_embed.proj.weight": raw(
                "cvt", "stages.1/embedding/convolution_embeddings/projection/kernel:0"
            ).transpose(3, 2, 0, 1),
            "stage2.blocks.1.attn.conv_proj_v.conv.weight": depthwise[:, :, 0, :].transpose(2, 0, 1)[:, None],
            "stage2.blocks.1.attn.conv_proj_k.bn.running_mean": raw(
                "cvt", conv_proj.format("key") + "normalization/moving_mean:0"
            ),
            "stage2.blocks.1.attn.conv_proj_k.bn.running_var": raw(
                "cvt", conv_proj.format("key") + "normalization/moving_variance:0"
            ),
            "stage2.blocks.1.attn.conv_proj_q.bn.weight": raw(
                "cvt", conv_proj.format("query") + "normalization/gamma:0"
            ),
            "stage2.blocks.1.attn.proj_k.weight": raw("cvt", attn + "projection_key/kernel:0").T,
            "stage2.blocks.1.attn.proj.weight": raw("cvt", block + "attention/output/dense/kernel:0").T,
            "stage2.blocks.1.mlp.fc1.weight": raw("cvt", block + "intermediate/dense/kernel:0").T,
            "stage2.blocks.1.mlp.fc2.bias": raw("cvt", block + "output/dense/bias:0"),
            "stage2.blocks.1.norm2.bias": raw("cvt", block + "layernorm_after/beta:0"),
            "stage2.cls_token": raw("cvt", "cvt.encoder.stages.2.cls_token:0"),
            "norm.weight": raw("layernorm", "layernorm/gamma:0"),
            "head.weight": raw("classifier", "classifier/kernel:0").T,
        }
    assert state["stage2.blocks.1.attn.conv_proj_v.conv.weight"].shape == (48, 1, 3, 3)
    assert state["stage2.blocks.1.mlp.fc1.weight"].shape == (192, 48)
    assert state["stage2.cls_token"].shape == (1, 1, 48)
    assert [k for k, v in expected.items() if not np.array_equal(state[k], v)] == []
    # Randomised when the fixture was made; equal values here would hide a gamma/beta or
    # mean/variance swap.
    bn = "stage2.blocks.1.attn.conv_proj_k.bn."
    assert not np.array_equal(state[bn + "running_mean"], state[bn + "running_var"])
    assert not np.array_equal(state[bn + "weight"], state[bn + "bias"])


def test_reader_runs_without_torch_or_tensorflow(tmp_path):
    """What it reads must not depend on PyTorch or TensorFlow being importable."""
    out = tmp_path / "state.npz"
    # The packages' __init__s import Keras, so the reader's modules are loaded without them.
    script = f"""
import sys, types
sys.modules["torch"] = None
sys.modules["tensorflow"] = None
for name, path in (("keras_cvt", {str(ROOT / "keras_cvt")!r}), ("keras_cvt.conversion", {str(ROOT / "keras_cvt" / "conversion")!r})):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
import numpy as np
from keras_cvt.conversion.checkpoints import read_checkpoint
state = read_checkpoint({str(TF_H5)!r})
loaded = [m for m in sys.modules if sys.modules[m] is not None]
heavy = sorted(m for m in loaded if m.split(".")[0] in ("torch", "tensorflow", "keras"))
assert heavy == [], heavy
np.savez({str(out)!r}, **state)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    blocked = dict(np.load(out))
    state = read_checkpoint(TF_H5)
    assert sorted(blocked) == sorted(state)
    assert [k for k in state if not np.array_equal(blocked[k], state[k])] == []


@pytest.mark.slow
def test_cli_converts_tf_model_h5(tmp_path, converted):
    out = tmp_path / "out.weights.h5"
    result = subprocess.run(
        [sys.executable, "-m", "keras_cvt.conversion", "tests/fixtures/hf_tiny_tf_model.h5", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"{TENSORS} tensors" in result.stdout
    # The CLI's file must be the one the in-process conversion wrote, variable for variable.
    arrays = [_datasets(converted[0]), _datasets(out)]
    assert len(arrays[0]) == TENSORS
    assert sorted(arrays[0]) == sorted(arrays[1])
    a, b = arrays
    differing = {k: float(np.abs(a[k] - b[k]).max()) for k in a if not np.array_equal(a[k], b[k])}
    assert differing == {}


@pytest.mark.parametrize(
    "layer, suffix, missing",
    [
        (
            "cvt",
            "stages.2/layers.1/attention/attention/convolution_projection_key/convolution_projection/"
            "normalization/moving_variance:0",
            "missing: stage2.blocks.1.attn.conv_proj_k.bn.running_var (48,)",
        ),
        ("cvt", "cvt.encoder.stages.2.cls_token:0", "missing: stage2.cls_token (1, 1, 48)"),
        ("classifier", "classifier/bias:0", "missing: head.bias (10,)"),
    ],
)
def test_missing_dataset_is_refused_without_output(tmp_path, layer, suffix, missing):
    damaged = tmp_path / "tf_model.h5"
    shutil.copyfile(TF_H5, damaged)
    with h5py.File(damaged, "r+") as h5:
        # Left in weight_names: a truncated or hand-edited file still lists what it lost.
        del h5[layer][_dataset_ending(h5, layer, suffix)]
    out = tmp_path / "out" / "tiny.weights.h5"
    with pytest.raises(CheckpointMismatchError) as caught:
        convert(damaged, out)
    assert caught.value.problems == [missing]
    assert missing in str(caught.value)
    assert not out.exists()
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_keras_weights_file_as_input_is_refused(tmp_path, converted):
    out = tmp_path / "again.weights.h5"
    with pytest.raises(ValueError, match=r"is a Keras weights file, this converter's output"):
        convert(converted[0], out)
    assert not out.exists()


def test_other_prefix_and_split_name_lists_read_the_same(tmp_path):
    """A second model in one process saves under `..._1/`; deep models' name lists are split.

    Keras 2 splits a list attribute over 64 KB into `weight_names0`, `weight_names1`, ...
    (CvT-W24's does not fit in one); this file is rewritten that way by hand.
    """
    rewritten = tmp_path / "tf_model.h5"
    shutil.copyfile(TF_H5, rewritten)
    with h5py.File(rewritten, "r+") as h5:
        (scope,) = [name for name in h5["cvt"] if isinstance(h5["cvt"][name], h5py.Group)]
        assert scope.startswith("tf_cvt_for_image_classification")
        renamed = scope + "_1"
        for layer in ("cvt", "layernorm", "classifier"):
            group = h5[layer]
            group.move(scope, renamed)
            names = [n.replace(scope + "/", renamed + "/", 1) for n in _weight_names(group)]
            del group.attrs["weight_names"]
            for i, start in enumerate(range(0, len(names), 70)):
                group.attrs[f"weight_names{i}"] = [n.encode() for n in names[start : start + 70]]
        layers = list(h5.attrs["layer_names"])
        del h5.attrs["layer_names"]
        h5.attrs["layer_names0"] = [str(n).encode() for n in layers[:2]]
        h5.attrs["layer_names1"] = [str(n).encode() for n in layers[2:]]
        assert "weight_names2" in h5["cvt"].attrs
    original, state = read_checkpoint(TF_H5), read_checkpoint(rewritten)
    assert len(state) == TENSORS
    assert sorted(state) == sorted(original)
    assert [k for k in state if not np.array_equal(state[k], original[k])] == []


@pytest.mark.parametrize("kind", ["not_hdf5", "keras3_layout"])
def test_foreign_h5_is_refused_clearly(tmp_path, kind):
    path = tmp_path / "model.h5"
    if kind == "not_hdf5":
        path.write_bytes(b"not an HDF5 file at all")
        message = r"cannot read .* as an HDF5 file"
    else:
        with h5py.File(path, "w") as h5:
            h5.create_dataset("layers/dense/vars/0", data=np.zeros((2, 2)))
        message = r"no `layer_names` attribute \(it looks like a Keras 3 weights file"
    with pytest.raises(ValueError, match=message):
        read_checkpoint(path)
