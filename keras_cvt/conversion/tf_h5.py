"""Reading HuggingFace's TensorFlow CvT weights (`tf_model.h5`) with h5py alone.

The hub's `tf_model.h5` files were written by transformers' `TFCvtForImageClassification`
(`save_pretrained`, i.e. Keras 2 `save_weights` in h5): one group per top-level layer (`cvt`,
`layernorm`, `classifier`) listed in the root attribute `layer_names`, and in each group one
dataset per variable, at its full variable name, listed in the group's `weight_names`, e.g.
`cvt/tf_cvt_for_image_classification/cvt/encoder/stages.2/layers.0/attention/attention/
projection_query/kernel:0`. The names follow HuggingFace's PyTorch keys, so once the Keras
variable names and layouts are undone, `hf_to_original_key` does the rest.
"""

import os

import h5py
import numpy as np

from keras_cvt.errors import describe_error
from keras_cvt.conversion.keys import hf_to_original_key

# Keras variable name -> PyTorch parameter/buffer name.
_VARIABLE_TO_TORCH = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _attribute_list(node, name):
    """A list-of-strings attribute, joined from `name0`, `name1`, ... where Keras split it.

    Keras 2 splits an attribute over HDF5's 64 KB object-header limit into numbered chunks; a
    deep model's `weight_names` (CvT-W24: about 700 names) does not fit in one.
    """
    if name in node.attrs:
        chunks = [node.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in node.attrs:
            chunks.append(node.attrs[f"{name}{len(chunks)}"])
    # h5py gives bytes for fixed-length strings (older writers), str for variable-length ones
    # (transformers 4.57 / h5py 3).
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for chunk in chunks for n in chunk]


def _hf_key(layer, weight_name):
    """`tf_cvt_for_image_classification_1/cvt/encoder/stages.0/.../kernel:0` ->
    (`cvt.encoder.stages.0.....weight`, Keras variable name `kernel`)."""
    parts = weight_name.rsplit(":", 1)[0].split("/")
    # The first part is the model's name scope, which Keras numbers per process
    # (`..._classification_1` for a second model): start at the layer's own name instead.
    if layer in parts:
        parts = parts[parts.index(layer) :]
    *path, variable = parts
    if not path:
        # The class token, made with add_weight outside any name scope, is named as its
        # HuggingFace key already: `cvt.encoder.stages.2.cls_token`.
        return variable, variable
    return ".".join(path + [_VARIABLE_TO_TORCH.get(variable, variable)]), variable


def _to_torch_layout(array, variable):
    if variable == "kernel" and array.ndim == 4:
        # HWIO -> OIHW; the grouped depthwise kernels [3, 3, 1, C] become (C, 1, 3, 3) alike.
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    if variable == "kernel" and array.ndim == 2:
        return np.ascontiguousarray(array.T)  # Dense [in, out] -> Linear (out, in)
    return array


def read_tf_h5(path):
    """Reads a HuggingFace `tf_model.h5` (TFCvtForImageClassification) into
    {original microsoft/CvT key: NumPy array in PyTorch layout}.

    Needs only h5py. Datasets are read one at a time, so a 1.1 GB CvT-W24 file costs about
    its size in memory, not twice. A variable listed in `weight_names` without its dataset is
    left out, for the converter's check to report as missing.
    """
    path = os.fspath(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"cannot read {path!r} as an HDF5 file: {describe_error(error)}") from error
    with h5:
        try:
            return _read_weights(path, h5)
        # Damage past the superblock (a name list, an object header) surfaces as h5py's
        # OSError or KeyError on first access, naming no file.
        except (OSError, KeyError) as error:
            raise ValueError(f"cannot read {path!r} as a HuggingFace tf_model.h5: {describe_error(error)}") from error


def _read_weights(path, h5):
    layers = _attribute_list(h5, "layer_names")
    if not layers:
        hint = (
            " (it looks like a Keras 3 weights file, which this converter writes rather than reads)"
            if "layers" in h5 or "vars" in h5
            else ""
        )
        raise ValueError(
            f"{path!r} is not a HuggingFace tf_model.h5 / Keras 2 weights file: it has no "
            f"`layer_names` attribute{hint}"
        )
    datasets = []
    for layer in layers:
        group = h5.get(layer)
        if group is None:
            continue
        for weight_name in _attribute_list(group, "weight_names"):
            dataset = group.get(weight_name)
            if isinstance(dataset, h5py.Dataset):
                datasets.append((layer, weight_name, dataset))
    _check_sizes(path, datasets)
    state = {}
    for layer, weight_name, dataset in datasets:
        hf_key, variable = _hf_key(layer, weight_name)
        key = hf_to_original_key(hf_key)
        if key in state:
            raise ValueError(f"{path!r} holds two variables that both map to {key}")
        state[key] = _to_torch_layout(dataset[()], variable)
    return state


def _check_sizes(path, datasets):
    """Refuses datasets that would take more memory than the file stores, before reading any.

    HDF5 stores a chunked dataset's unwritten chunks as nothing, so a 2 KB file can declare
    a (100000000, 48) kernel of fill values; a compressed one is a zip bomb alike. Keras 2 and
    transformers write every weight contiguous and uncompressed, so each dataset's declared
    size must be what the file allocates for it (h5py refuses a file shorter than that).
    """
    for _, weight_name, dataset in datasets:
        if dataset.dtype.kind != "f":
            raise ValueError(
                f"{path!r}: {weight_name} {dataset.shape} holds {dataset.dtype} values, expected floating point"
            )
        size = dataset.size * dataset.dtype.itemsize
        stored = dataset.id.get_storage_size()
        if stored < size:
            raise ValueError(
                f"{path!r}: {weight_name} is {dataset.shape} ({size} bytes) but the file stores "
                f"{stored} bytes for it (sparse or compressed); expected an uncompressed weight"
            )
