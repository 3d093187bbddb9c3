"""Reading original and HuggingFace CvT checkpoints into {original key: NumPy array}."""

import os
import pickle
import re

import numpy as np

# HuggingFace's CvT names each original module differently but one to one; these rewrite a
# HuggingFace key into the original's. Order matters: `attention.output.dense` before
# `output.dense`.
_HF_TO_ORIGINAL = [
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.projection\.", r"stage\1.patch_embed.proj."),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.embedding\.convolution_embeddings\.normalization\.", r"stage\1.patch_embed.norm."),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.cls_token$", r"stage\1.cls_token"),
    (r"^(?:cvt\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stage\1.blocks.\2."),
    (r"\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.convolution\.", r".attn.conv_proj_\1.conv."),
    (r"\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.normalization\.", r".attn.conv_proj_\1.bn."),
    (r"\.attention\.attention\.projection_(q|k|v)\w*\.", r".attn.proj_\1."),
    (r"\.attention\.output\.dense\.", r".attn.proj."),
    (r"\.intermediate\.dense\.", r".mlp.fc1."),
    (r"\.output\.dense\.", r".mlp.fc2."),
    (r"\.layernorm_before\.", r".norm1."),
    (r"\.layernorm_after\.", r".norm2."),
    (r"^layernorm\.", r"norm."),
    (r"^classifier\.", r"head."),
]


def hf_to_original_key(key):
    """Rewrites a HuggingFace `CvtForImageClassification` key into the original's."""
    for pattern, replacement in _HF_TO_ORIGINAL:
        key = re.sub(pattern, replacement, key)
    return key


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
        raise ValueError(f"cannot read {path!r} as a PyTorch checkpoint: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, expected a state dict")
    state = _unwrap(state)
    # detach: a dict of nn.Parameters (e.g. `dict(model.named_parameters())`) loads with
    # requires_grad set, which `.numpy()` refuses.
    return {k: v.detach().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read_safetensors(path):
    from safetensors.numpy import load_file

    try:
        state = load_file(path)
    except Exception as error:
        raise ValueError(f"cannot read {path!r} as a safetensors checkpoint: {error}") from error
    return _unwrap(state)


def read_checkpoint(path):
    """Reads a `.pth`/`.bin` (PyTorch), `.safetensors` or HuggingFace `tf_model.h5` CvT checkpoint.

    Returns the tensors as float/int NumPy arrays under the original microsoft/CvT key names,
    whatever format and naming (original or HuggingFace) the file uses.
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
        # Imported here: tf_h5 takes hf_to_original_key from this module.
        from weights_conversion.tf_h5 import read_tf_h5

        state = read_tf_h5(path)
    else:
        raise ValueError(
            f"unknown checkpoint format {path!r}: expected .pth, .pt, .bin, .safetensors or "
            "HuggingFace's tf_model.h5"
        )
    if _is_huggingface(state):
        state = {hf_to_original_key(k): v for k, v in state.items()}
    return {k: np.asarray(v) for k, v in state.items()}
