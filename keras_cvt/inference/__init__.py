"""The inference forms of a CvT, built from a trained model:

- `fold.optimize_for_inference`: BatchNorm, the attention scale and QuickGELU's factor folded
  into the weights of the folded layers of `inference.layers` (every backend);
- `frozen.freeze_for_inference`: the folded model as one constant TensorFlow graph.

`frozen` is imported on first use: it imports TensorFlow, which the folded form needs on no
backend.
"""

import importlib

from keras_cvt.inference.fold import DTYPES, is_foldable, optimize_for_inference

_LAZY = {"FrozenFunction": "keras_cvt.inference.frozen", "freeze_for_inference": "keras_cvt.inference.frozen"}

__all__ = ["DTYPES", "FrozenFunction", "freeze_for_inference", "is_foldable", "optimize_for_inference"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_cvt.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
