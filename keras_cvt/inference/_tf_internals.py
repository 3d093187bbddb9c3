"""The private TensorFlow APIs that `keras_cvt.inference.frozen` needs, and nothing else: if a
TensorFlow release moves them, this module fails to import, and tests/test_frozen.py
(`test_private_tensorflow_apis`) says so on any machine.

TensorFlow 2 has no public function that freezes a concrete function (its TFLite converter uses
this one), none that says whether it runs oneDNN, and none that asks whether an op is
registered (oneDNN's LayerNorm kernel is not in `tf.raw_ops`).
"""

from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from tensorflow.python.framework.op_def_registry import get as _registered_op_def
from tensorflow.python.util import _pywrap_util_port

__all__ = ["convert_variables_to_constants_v2", "onednn_enabled", "op_registered"]


def onednn_enabled():
    """Whether this TensorFlow runs its oneDNN kernels (x86 builds, unless turned off)."""
    return bool(_pywrap_util_port.IsMklEnabled())


def op_registered(name):
    """Whether this TensorFlow has the op (kernel) `name`."""
    return _registered_op_def(name) is not None
