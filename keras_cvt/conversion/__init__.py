"""Converts original CvT checkpoints (Microsoft `.pth`, HuggingFace `pytorch_model.bin` /
`model.safetensors` / `tf_model.h5`) into Keras `.weights.h5` files for `keras_cvt`."""

import os

from keras_cvt import architectures
from keras_cvt.atomic import check_writable, publish_file, reserve_for_variables
from keras_cvt.builder import CvT
from keras_cvt.conversion.checkpoints import read_checkpoint
from keras_cvt.conversion.keys import hf_to_original_key
from keras_cvt.conversion.mapping import assign, expected_shapes, infer_config, mismatches, value_problem, variable_map

__all__ = ["CheckpointMismatchError", "convert", "hf_to_original_key", "read_checkpoint"]

# Enough lines to see the pattern of a wrong checkpoint without drowning the terminal.
_MAX_REPORTED = 40


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not fit the model; `problems` lists each one."""

    def __init__(self, path, model_name, problems):
        self.problems = problems
        shown = "\n  ".join(problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        # One problem on one line, like every other refusal.
        listed = problems[0] if len(problems) == 1 else f"{len(problems)} problem(s)\n  {shown}{more}"
        super().__init__(f"checkpoint {path!r} does not fit {model_name}: {listed}")


def convert(input_path, output_path, model=None, config=None):
    """Converts a CvT checkpoint into a Keras `.weights.h5` file.

    Everything is checked before anything large is allocated: the output path, then the
    checkpoint's names, ranks and shapes against the architecture they imply (worked out from
    the shapes, never by building a model first), then its values; only then is the model
    built, filled and saved.

    Args:
        input_path: original `.pth` (plain, or nested under `state_dict`/`model`, keys possibly
            prefixed `module.`), HuggingFace `pytorch_model.bin`, `model.safetensors` or
            `tf_model.h5`. float16 and bfloat16 weights are upcast to float32.
        output_path: where to write; must end in `.weights.h5`. Written under a temporary
            name and renamed when complete, so a failed conversion leaves nothing behind.
        model: `"cvt13"`, `"cvt21"` or `"cvtw24"` to insist on a variant; `None` infers the
            architecture from the tensors.
        config: the `keras_cvt.CvT` arguments to insist on instead (those of a `hf://` repo's
            config.json, `classes` its labels' count when it has them); their heads and
            embedding strides, which leave no trace in the tensors, are the converted model's.

    Returns:
        A dict describing the conversion: `variant` (or None for a custom architecture),
        `config` (the `keras_cvt.CvT` arguments that load the file) and `tensors` (count).

    Raises:
        CheckpointMismatchError: the tensors are missing, unexpected or misshapen for the model.
        ValueError: bad arguments, an output path that cannot be written, or a file that is
            not a CvT checkpoint (each naming the file and the problem).
        OSError: writing the output failed (a full disk); nothing is left behind.
    """
    output_path = os.fspath(output_path)
    if not output_path.endswith(".weights.h5"):
        raise ValueError(f"`output_path` must end with .weights.h5, got {output_path!r}")
    if model is not None and model not in architectures.VARIANTS:
        raise ValueError(f"`model` must be one of {sorted(architectures.VARIANTS)} or None, got model={model!r}")
    if os.path.isdir(output_path):
        raise ValueError(f"`output_path` {output_path!r} is an existing directory, expected a file path")
    check_writable(output_path, "output_path")
    declared = None if config is None else dict(config)
    input_path = os.fspath(input_path)
    state = read_checkpoint(input_path)
    try:
        variant, config = infer_config(state)
    except ValueError as error:
        raise ValueError(f"checkpoint {input_path!r}: {error}") from error
    if declared is not None:
        variant, config = None, {"classes": config["classes"], **declared}
    elif model is not None:
        # The published variant as its builder makes it; only the classifier width is read.
        variant = model
        config = {
            **architectures.VARIANTS[model].config,
            "classes": config["classes"],
        }
    expected = expected_shapes(config)
    problems = mismatches(state, expected)
    if problems:
        described = "the architecture its config declares" if declared is not None else "the inferred architecture"
        raise CheckpointMismatchError(input_path, variant or described, problems)
    problem = value_problem(state, expected)
    if problem:
        raise ValueError(f"checkpoint {input_path!r}: {problem}")
    keras_model = CvT(
        **config, weights=None, include_preprocessing=False, input_shape=(None, None, 3), name=variant or "cvt"
    )
    mapping = variable_map(keras_model)
    assign(state, mapping)
    with publish_file(output_path) as temporary:
        # A full disk must stop before h5py writes: HDF5 crashes the process closing a file
        # whose writes failed. It is then a WriteError naming `output_path`.
        reserve_for_variables(temporary, keras_model.weights, previous=output_path)
        keras_model.save_weights(temporary)
    return {"variant": variant, "config": config, "tensors": len(mapping)}
