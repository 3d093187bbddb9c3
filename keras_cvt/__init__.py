"""CvT (Convolutional vision Transformer) for Keras, shaped like `keras.applications`.

The package is layered one way (see docs/layout.md): `layers` -> `builder` (the generic
`CvT`) -> `conversion` (reading original checkpoints) -> `variants` (`CvT13`, ...,
with `pretrained` weights from the `cache`) -> `inference`, `export`, `training`.

Names and submodules (`keras_cvt.hf`, `keras_cvt.sources`, ...) are imported on first use, so
`import keras_cvt` costs little and imports no TensorFlow: under the JAX or PyTorch backend,
building and running a model never does. Only the layers are imported at once, so that a
`.keras` file loads after a plain `import keras_cvt`; keras-hub's classes (`CvTBackbone`...)
are registered with Keras when keras-hub is imported, before or after keras_cvt, so that
keras-hub's generic loaders (`keras_hub.models.ImageClassifier.from_preset`) read our presets.
"""

import importlib
import importlib.abc
import sys
import warnings

from keras_cvt import architectures
from keras_cvt import layers as _layers  # noqa: F401 (registers the layers with Keras)
from keras_cvt._version import __version__
from keras_cvt.inference import layers as _inference_layers  # noqa: F401 (the same, folded)

# Public name -> the module that defines it.
_EXPORTS = {
    "CvT": "keras_cvt.builder",
    **{variant.builder: "keras_cvt.variants" for variant in architectures.VARIANTS.values()},
    "MODEL_CONFIGS": "keras_cvt.architectures",
    "ClassToken": "keras_cvt.layers",
    "ConvAttention": "keras_cvt.layers",
    "ConvEmbedding": "keras_cvt.layers",
    "CvTBlock": "keras_cvt.layers",
    "LayerNorm": "keras_cvt.layers",
    "StochasticDepth": "keras_cvt.layers",
    "FrozenFunction": "keras_cvt.inference.frozen",
    "freeze_for_inference": "keras_cvt.inference.frozen",
    "optimize_for_inference": "keras_cvt.inference.fold",
    "decode_predictions": "keras_cvt.preprocessing",
    "imagenet_normalize": "keras_cvt.preprocessing",
    "preprocess_input": "keras_cvt.preprocessing",
    "available_weights": "keras_cvt.pretrained",
    "from_hf": "keras_cvt.variants",
    # keras-hub's (the `hub` extra): importing them imports keras-hub.
    "CvTBackbone": "keras_cvt.keras_hub",
    "CvTImageClassifier": "keras_cvt.keras_hub",
    "TFLiteClassifier": "keras_cvt.export.tflite",
    "export_for_serving": "keras_cvt.export.saved_model",
    "export_tflite": "keras_cvt.export.tflite",
}

# Submodules users call (`keras_cvt.hf.labels(...)`), reachable without importing them first.
_SUBMODULES = {
    "architectures": "keras_cvt.architectures",
    "cache": "keras_cvt.cache",
    "conversion": "keras_cvt.conversion",
    "downloads": "keras_cvt.downloads",
    "export": "keras_cvt.export",
    "hf": "keras_cvt.hf",
    "hf_config": "keras_cvt.hf_config",
    "images": "keras_cvt.images",
    "inference": "keras_cvt.inference",
    "keras_hub": "keras_cvt.keras_hub",
    "preprocessing": "keras_cvt.preprocessing",
    "pretrained": "keras_cvt.pretrained",
    "serving": "keras_cvt.serving",
    "sources": "keras_cvt.sources",
    "training": "keras_cvt.training",
    "transforms": "keras_cvt.transforms",
    "variants": "keras_cvt.variants",
    "weights_file": "keras_cvt.weights_file",
    # The module's name before 0.3 (HuggingFace downloads), beside the keras-hub integration.
    "hub": "keras_cvt.downloads",
}

# {third-party package: our module that registers classes with Keras for it}, imported as
# soon as the package is.
_ON_IMPORT = {"keras_hub": "keras_cvt.keras_hub"}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name):
    if name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'keras_cvt' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


class _ThenImport(importlib.abc.Loader):
    """The loader of a package of `_ON_IMPORT`, which imports our module once it has run."""

    def __init__(self, loader, module):
        self._loader, self._module = loader, module

    def __getattr__(self, name):
        # Resources, source and the rest: the package's own loader answers.
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register(self._module)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Python's import hook for the packages of `_ON_IMPORT`: found by the finders after it,
    loaded by their loader, then our module imported (Keras finds a class by its registered
    name only once it is registered; it imports no module outside its own packages)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _ON_IMPORT:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self or not hasattr(finder, "find_spec") else finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenImport(spec.loader, _ON_IMPORT[name])
                return spec
        return None


if not any(isinstance(finder, _ImportHook) for finder in sys.meta_path):
    sys.meta_path.insert(0, _ImportHook())


def _register(module):
    """Imports `module` of `_ON_IMPORT`; a failure (another keras-hub than the `hub` extra's)
    is a warning, not a failure of the user's own `import keras_hub`."""
    try:
        importlib.import_module(module)
    except Exception as error:
        warnings.warn(
            f"keras_cvt could not register its classes with Keras ({module}: {type(error).__name__}: "
            f"{error}); keras-hub's generic from_preset will not find keras_cvt's presets",
            stacklevel=3,
        )


for _package, _module in _ON_IMPORT.items():
    if _package in sys.modules:
        _register(_module)
