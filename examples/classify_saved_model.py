"""Classifies image files with an exported SavedModel, with TensorFlow alone (no Keras, no keras_cvt).

    python examples/classify_saved_model.py models/cvt13/1 cat.jpg coffee.jpg

Loads the SavedModel with plain `tf.saved_model.load` and sends the files' bytes, as they are,
to its `serving_default` signature, which is what TF Serving does with a request. Prints one
JSON object per image: `{"file", "classes", "labels", "scores"}`. Importing Keras is refused in
this process, so a run that succeeds shows the exported model needs TensorFlow only.
"""

import argparse
import importlib.abc
import importlib.machinery
import json
import sys

_NOT_NEEDED = ("keras", "keras_cvt", "tf_keras")


class _RefuseKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Lets Keras be found (TensorFlow looks for it) but not imported."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in _NOT_NEEDED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = self
        return spec

    def create_module(self, spec):
        raise ImportError(f"{spec.name} was imported, but serving must not need it")

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} was imported, but serving must not need it")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="the exported SavedModel directory (e.g. models/cvt13/1)")
    parser.add_argument("images", nargs="+", help="image files: JPEG, PNG, GIF or BMP")
    args = parser.parse_args(argv)
    already = sorted(name for name in sys.modules if name.partition(".")[0] in _NOT_NEEDED)
    if already:
        raise RuntimeError(f"imported before serving started: {already}")
    sys.meta_path.insert(0, _RefuseKeras())

    import tensorflow as tf

    serve = tf.saved_model.load(args.saved_model).signatures["serving_default"]
    encoded = [tf.io.read_file(path) for path in args.images]
    outputs = serve(images=tf.stack(encoded))
    for i, path in enumerate(args.images):
        print(
            json.dumps(
                {
                    "file": path,
                    "classes": outputs["classes"][i].numpy().tolist(),
                    "labels": [label.decode() for label in outputs["labels"][i].numpy()],
                    "scores": outputs["scores"][i].numpy().tolist(),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
