"""Reading original and HuggingFace CvT checkpoints into {original key: NumPy array}."""

import json
import os
import pickle
import re
import struct

import numpy as np

from keras_cvt.errors import describe_error
from keras_cvt.conversion.keys import hf_to_original_key
from keras_cvt.conversion.tf_h5 import read_tf_h5

def _is_huggingface(keys):
    return any(k.startswith(("cvt.", "encoder.stages.", "classifier.")) for k in keys)


def _unwrap(state):
    """Finds the tensors in a training checkpoint and drops DataParallel's `module.` prefix."""
    for nest in ("state_dict", "model"):
        if isinstance(state.get(nest), dict):
            state = state[nest]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_torch(path):
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"reading {path!r} needs PyTorch (`pip install torch`); a model.safetensors file "
            "converts without it"
        ) from error
    # weights_only: a checkpoint is data, and unpickling arbitrary objects would run code.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises retrying with weights_only=False: the one thing not to do
        # with a file of unknown origin, so it is not passed on.
        culprit = re.search(r"GLOBAL ([\w.]+)", str(error))
        if culprit is None:
            raise ValueError(f"cannot read {path!r} as a PyTorch checkpoint: not a tensor pickle") from error
        raise ValueError(
            f"checkpoint {path!r} holds objects other than tensors and plain containers "
            f"({culprit.group(1)}), refused because unpickling them could run arbitrary code; "
            "save the model's state_dict alone"
        ) from error
    except Exception as error:
        # A truncated or foreign file fails deep in zipfile/pickle (IndexError, EOFError,
        # RuntimeError...) with a message that names no file.
        raise ValueError(f"cannot read {path!r} as a PyTorch checkpoint: {describe_error(error)}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, expected a state dict")
    state = {k: v for k, v in _unwrap(state).items() if isinstance(v, torch.Tensor)}
    # torch.load checks each storage against the bytes the file holds for it, but a tensor is
    # a view: a stride-0 `expand` makes 192 stored bytes a (100000000, 48) head, which a model
    # built to fit it (19 GB) and any copy of it would allocate. Measured before any copy.
    storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in state.values()}
    claimed, stored = sum(map(_bytes, state.values())), sum(storages.values())
    if claimed > stored:
        key = max(state, key=lambda k: _bytes(state[k]) / max(1, state[k].untyped_storage().nbytes()))
        raise ValueError(
            f"checkpoint {path!r} claims {claimed} bytes of tensors but stores {stored}: {key} is "
            f"{tuple(state[key].shape)} over {state[key].untyped_storage().nbytes()} stored bytes (an "
            "expanded or overlapping view); save each tensor with .clone()"
        )
    return {k: _torch_to_numpy(path, k, v) for k, v in state.items()}


def _bytes(tensor):
    return tensor.numel() * tensor.element_size()


def _torch_to_numpy(path, key, tensor):
    import torch

    # detach: a dict of nn.Parameters (e.g. `dict(model.named_parameters())`) loads with
    # requires_grad set, which `.numpy()` refuses.
    tensor = tensor.detach()
    # bfloat16 and float8 have no NumPy type (float16 is upcast in read_checkpoint).
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError) as error:
        raise ValueError(
            f"checkpoint {path!r}: {key} {tuple(tensor.shape)} has dtype {tensor.dtype}, which is not a "
            "floating-point type NumPy can hold"
        ) from error


def _bfloat16_to_float32(raw):
    """bfloat16 is the upper half of a float32: shifting its bits back is exact."""
    return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path):
    from safetensors import safe_open

    # The library checks the header against the file (every tensor's offsets inside it, of
    # the size its shape and dtype imply) before anything is read, so a header claiming a huge
    # shape is refused without allocating it.
    try:
        f = safe_open(path, framework="np")
    except Exception as error:
        raise ValueError(f"cannot read {path!r} as a safetensors checkpoint: {describe_error(error)}") from error
    with f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        state = {}
        for key, dtype in dtypes.items():
            if dtype == "BF16":
                continue
            try:
                state[key] = f.get_tensor(key)
            # The header is valid, so what fails is making a NumPy array of this dtype (F8_*).
            except Exception as error:
                raise ValueError(
                    f"checkpoint {path!r}: {key} has dtype {dtype}, which this converter does not "
                    "read (weights must be F64, F32, F16 or BF16)"
                ) from error
    bfloat16 = [k for k, dtype in dtypes.items() if dtype == "BF16"]
    if bfloat16:
        state.update(_read_safetensors_bfloat16(path, bfloat16))
    return _unwrap(state)


def _read_safetensors_bfloat16(path, keys):
    """The `keys` (bfloat16 tensors, whose header safe_open has validated) as float32."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        arrays = {}
        for key in keys:
            begin, end = header[key]["data_offsets"]
            f.seek(8 + header_size + begin)
            arrays[key] = _bfloat16_to_float32(f.read(end - begin)).reshape(header[key]["shape"])
    return arrays


def read_checkpoint(path):
    """Reads a `.pth`/`.bin` (PyTorch), `.safetensors` or HuggingFace `tf_model.h5` CvT checkpoint.

    Returns the tensors as NumPy arrays under the original microsoft/CvT key names, whatever
    format and naming (original or HuggingFace) the file uses; floating-point tensors come
    back as float32 (float16 and bfloat16 upcast, exactly) or float64. No tensor takes more
    memory than the file stores for it (float16/bfloat16: twice that), whatever its header or
    strides claim; anything unreadable is a ValueError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path!r}")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        state = _read_torch(path)
    elif path.endswith(".weights.h5"):
        raise ValueError(
            f"{path!r} is a Keras weights file, this converter's output, not a checkpoint to "
            "convert: load it with keras_cvt.CvT(weights=...)"
        )
    elif path.endswith(".h5"):
        state = read_tf_h5(path)
    else:
        raise ValueError(
            f"unknown checkpoint format {path!r}: expected .pth, .pt, .bin, .safetensors or "
            "HuggingFace's tf_model.h5"
        )
    if _is_huggingface(state):
        state = {hf_to_original_key(k): v for k, v in state.items()}
    # Upcast once here rather than at every use: Keras' variables are float32.
    return {k: v.astype(np.float32) if v.dtype == np.float16 else np.asarray(v) for k, v in state.items()}
