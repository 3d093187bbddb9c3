"""Keras' own `model.quantize("int8")` on CvT, on each backend: which layers it quantizes, what
it costs and what it gains.

    python benchmarks/keras_quantize.py [--backends tensorflow jax] [--turns 7] [--weights W]

- Costs, on trained weights: held-out top-1 of float32 and int8, and their agreement, of the
  quickstart's tiny model fine-tuned on scikit-learn's digits (`tests.conftest.fine_tune_digits`,
  run first unless `--weights` names its `last.weights.h5`), 360 held-out digits at 32 x 32.
- Coverage: the layers with weights, by class, quantized or not, and the share of the weights
  stored in int8 (the tiny model and CvT-13).
- Gains: the `.keras` file's size, and the time of CvT-13 at 224 (weights perturbed as trained
  ones are, `benchmarks.perturbation`), `predict_on_batch` at batch 1 (samples of
  `--latency-calls` calls, their median) and 32, every int8 sample between two float32 samples
  of the same process and the ratio the median of int8 over the mean of the two.
- The int8 `.keras` file loads back with the same outputs (checked, or the run fails).

Each backend runs in its own process (KERAS_BACKEND=...); results go to
benchmarks/results/keras_quantize.json with the CPU's model and features.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import cpu_features  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "keras_quantize.json"
BACKENDS = ("tensorflow", "jax")
CVT13_SIZE = 224


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--weights", help="the fine-tuned tiny model's last.weights.h5 (default: fine-tune it first)")
    parser.add_argument("--turns", type=int, default=7, help="int8 samples per batch size, each between two float32")
    parser.add_argument("--latency-calls", type=int, default=10, help="batch-1 calls per sample")
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # a child process: measure on this backend
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:
        result = measure(args)
        pathlib.Path(args.output).write_text(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as directory:
        weights = args.weights or fine_tune(pathlib.Path(directory))
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cpu": cpu_features(),
            "load_average": os.getloadavg(),
            "turns": args.turns,
            "backends": {},
        }
        for backend in args.backends:
            output = pathlib.Path(directory) / f"{backend}.json"
            command = [sys.executable, __file__, "--backend", backend, "--weights", str(weights), "--output",
                       str(output), "--turns", str(args.turns), "--latency-calls", str(args.latency_calls)]
            subprocess.run(command, check=True, env={**os.environ, "KERAS_BACKEND": backend})
            results["backends"][backend] = json.loads(output.read_text())
            print(json.dumps({backend: results["backends"][backend]}, indent=1), flush=True)
    results["load_average_after"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {RESULTS}")
    return 0


def fine_tune(directory):
    from tests.conftest import fine_tune_digits

    return fine_tune_digits(directory)[0]


def coverage(model):
    """`({layer class: [quantized, total]}, share of the weights' values stored in int8)` over
    the layers that have weights."""
    counts, int8_values, values = {}, 0, 0
    for layer in model._flatten_layers(include_self=False):
        if not layer.weights or len(list(layer._flatten_layers())) > 1:
            continue
        entry = counts.setdefault(type(layer).__name__, [0, 0])
        entry[0] += layer.quantization_mode == "int8"
        entry[1] += 1
        for weight in layer.weights:
            size = int(np.prod(weight.shape))
            values += size
            int8_values += size if weight.dtype == "int8" else 0
    return counts, int8_values / values


def measure(args):
    import keras

    from benchmarks.bench import keras_model, repeated, time_bracketed
    from keras_cvt import MODEL_CONFIGS, CvT
    from tests.conftest import TINY_CONFIG, load_quickstart

    _, (images, labels) = load_quickstart().load_digits(0)
    tiny = {"weights": args.weights, "input_shape": (32, 32, 3), **TINY_CONFIG}
    float_model, int8_model = CvT(**tiny), CvT(**tiny)
    int8_model.quantize("int8")
    pixels = images.astype(np.float32)
    float_classes = float_model.predict(pixels, batch_size=120, verbose=0).argmax(1)
    int8_probabilities = int8_model.predict(pixels, batch_size=120, verbose=0)
    int8_classes = int8_probabilities.argmax(1)
    result = {
        "tiny": {
            "coverage": coverage(int8_model),
            "top1_float32": float(np.mean(float_classes == labels)),
            "top1_int8": float(np.mean(int8_classes == labels)),
            "agreement": float(np.mean(int8_classes == float_classes)),
            "images": len(labels),
            **file_sizes(float_model, int8_model, pixels[:8]),
        }
    }
    config = MODEL_CONFIGS["cvt13"]
    float_model, int8_model = keras_model(config, CVT13_SIZE), keras_model(config, CVT13_SIZE)
    int8_model.quantize("int8")
    result["cvt13"] = {"coverage": coverage(int8_model), "timing": {}}
    result["cvt13"].update(file_sizes(float_model, int8_model, None))
    rng = np.random.default_rng(0)
    for batch, calls in ((1, args.latency_calls), (32, 1)):
        x = rng.uniform(0, 255, (batch, CVT13_SIZE, CVT13_SIZE, 3)).astype(np.float32)
        reference = ("float32", repeated(lambda: keras.ops.convert_to_numpy(float_model.predict_on_batch(x)), calls))
        quantized = ("int8", repeated(lambda: keras.ops.convert_to_numpy(int8_model.predict_on_batch(x)), calls))
        times, ratios = time_bracketed(reference, [quantized], args.turns, warmup=2)
        result["cvt13"]["timing"][f"batch{batch}"] = {
            "float32_s": statistics.median(times["float32"]),
            "int8_s": statistics.median(times["int8"]),
            "int8_over_float32": statistics.median(ratios["int8"]),
            "ratios": ratios["int8"],
        }
    return result


def file_sizes(float_model, int8_model, pixels):
    """The `.keras` files' sizes; the int8 one loaded back must give the same outputs on
    `pixels` (None: not checked)."""
    import keras

    with tempfile.TemporaryDirectory() as directory:
        paths = {name: os.path.join(directory, f"{name}.keras") for name in ("float32", "int8")}
        float_model.save(paths["float32"])
        int8_model.save(paths["int8"])
        if pixels is not None:
            loaded = keras.saving.load_model(paths["int8"])
            difference = np.abs(loaded.predict(pixels, verbose=0) - int8_model.predict(pixels, verbose=0)).max()
            if difference != 0:
                raise AssertionError(f"the int8 .keras file loads back with outputs {difference} away")
        return {f"keras_file_bytes_{name}": os.path.getsize(path) for name, path in paths.items()}


if __name__ == "__main__":
    sys.exit(main())
