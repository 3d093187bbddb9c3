"""The old name of `keras_cvt.conversion`, kept so that `import weights_conversion` and
`python -m weights_conversion` go on working."""

from keras_cvt.conversion import CheckpointMismatchError, convert, hf_to_original_key, read_checkpoint

__all__ = ["CheckpointMismatchError", "convert", "hf_to_original_key", "read_checkpoint"]
