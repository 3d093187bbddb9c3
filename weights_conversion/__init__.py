"""Converts original CvT checkpoints (Microsoft `.pth`, HuggingFace `pytorch_model.bin` /
`model.safetensors`) into Keras `.weights.h5` files for `keras_cvt`."""

import os
import shutil
import tempfile

from weights_conversion.checkpoints import hf_to_original_key, read_checkpoint
from weights_conversion.mapping import assign, infer_config, mismatches, variable_map

__all__ = ["CheckpointMismatchError", "convert", "hf_to_original_key", "read_checkpoint"]

# Enough lines to see the pattern of a wrong checkpoint without drowning the terminal.
_MAX_REPORTED = 40


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model; `problems` lists each one."""

    def __init__(self, path, model_name, problems):
        self.problems = problems
        shown = "\n  ".join(problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        super().__init__(
            f"checkpoint {path!r} does not fit {model_name}: {len(problems)} problem(s)\n  {shown}{more}"
        )


def convert(input_path, output_path, model=None):
    """Converts a CvT checkpoint into a Keras `.weights.h5` file.

    Args:
        input_path: original `.pth` (plain, or nested under `state_dict`/`model`, keys possibly
            prefixed `module.`), HuggingFace `pytorch_model.bin` or `model.safetensors`.
        output_path: where to write; must end in `.weights.h5`. Written under a temporary
            name and renamed when complete, so a failed conversion leaves nothing behind.
        model: `"cvt13"`, `"cvt21"` or `"cvtw24"` to insist on a variant; `None` infers the
            architecture from the tensors.

    Returns:
        A dict describing the conversion: `variant` (or None for a custom architecture),
        `config` (the `keras_cvt.CvT` arguments that load the file) and `tensors` (count).

    Raises:
        CheckpointMismatchError: the tensors are missing, unexpected or misshapen for the model.
        ValueError: bad arguments or a file that is not a CvT checkpoint.
    """
    from keras_cvt.cvt import CvT, MODEL_CONFIGS

    output_path = os.fspath(output_path)
    if not output_path.endswith(".weights.h5"):
        raise ValueError(f"`output_path` must end with .weights.h5, got {output_path!r}")
    if model is not None and model not in MODEL_CONFIGS:
        raise ValueError(f"`model` must be one of {sorted(MODEL_CONFIGS)} or None, got model={model!r}")
    state = read_checkpoint(input_path)
    variant, config = infer_config(state)
    if model is not None:
        # The published variant as its builder makes it; only the classifier width is read.
        variant = model
        config = {
            **{k: MODEL_CONFIGS[model][k] for k in ("depths", "embed_dims", "num_heads")},
            "classes": config["classes"],
        }
    keras_model = CvT(
        **config, weights=None, include_preprocessing=False, input_shape=(None, None, 3), name=variant or "cvt"
    )
    mapping = variable_map(keras_model)
    problems = mismatches(state, mapping)
    if problems:
        raise CheckpointMismatchError(os.fspath(input_path), variant or "the inferred architecture", problems)
    assign(state, mapping)
    _save_atomically(keras_model, output_path)
    return {"variant": variant, "config": config, "tensors": len(mapping)}


def _save_atomically(keras_model, output_path):
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    # A private directory rather than mkstemp: mkstemp's file is mode 0600, which the renamed
    # weights file would keep; a file that h5py creates gets the user's umask like any other.
    tmp_dir = tempfile.mkdtemp(prefix=".partial-", dir=directory)
    try:
        tmp = os.path.join(tmp_dir, os.path.basename(output_path))
        keras_model.save_weights(tmp)
        os.replace(tmp, output_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
