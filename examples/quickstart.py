"""The whole job, offline, in a few minutes: convert an original CvT, fine-tune it, serve it.

    python examples/quickstart.py                     # everything under runs/quickstart-<time>/
    python examples/quickstart.py --weights imagenet  # the pretrained CvT-13 on examples/images/

1. Converts the tiny CvT checkpoint that the original microsoft/CvT PyTorch code wrote
   (`tests/fixtures/cvt_tiny_official_perturbed.pth`, with the logits that code computed) and
   shows that the Keras model reproduces those logits.
2. Fine-tunes the converted model with `model.fit` on a `tf.data` pipeline over scikit-learn's
   handwritten digits (shipped with scikit-learn, no download), under `MirroredStrategy`
   across all GPUs, or across two logical devices carved out of the CPU where there is none.
3. Exports it for TF Serving, writes held-out digits as PNG files and classifies their bytes
   through the SavedModel's `serving_default` signature in a process that refuses to import
   Keras (`examples/classify_saved_model.py`), and compares with the Keras model.

With `--weights imagenet` (downloads the ImageNet CvT-13 on first use) or a CvT-13
`.weights.h5` file, steps 2 and 3 are replaced by serving that classifier and classifying the
photos in `examples/images/`. Everything is written under `--output-dir`; `summary.json`
there holds the numbers printed at the end.
"""

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
CHECKPOINT = HERE.parent / "tests" / "fixtures" / "cvt_tiny_official_perturbed.pth"
CHECKPOINT_IO = HERE.parent / "tests" / "fixtures" / "cvt_tiny_official_perturbed_io.npz"
PHOTOS = HERE / "images"
CLIENT = HERE / "classify_saved_model.py"
# The architecture of the tiny checkpoint; attention heads leave no trace in weights.
TINY = {"depths": (1, 2, 2), "embed_dims": (16, 32, 48), "num_heads": (1, 2, 3)}
TOLERANCE = 1e-4
DIGIT_SIZE = 32  # the 8x8 digits upsampled: three stride-2+ embeddings leave 2x2 tokens
HELD_OUT = 360  # of scikit-learn's 1797 digits


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        help="instead of fine-tuning on digits, serve CvT-13 with these weights on the photos in "
        "examples/images/: 'imagenet' (needs the network once) or a CvT-13 .weights.h5 file",
    )
    parser.add_argument("--output-dir", type=pathlib.Path, help="default: runs/quickstart-<date>-<time>")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32, help="per replica")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak, after one warm-up epoch")
    parser.add_argument("--cpu-replicas", type=int, default=2, help="logical CPU devices when there is no GPU")
    parser.add_argument("--png-files", type=int, default=16, help="held-out digits to classify as PNG files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's log lines that are hidden by default")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "cpu_replicas", "png_files"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0.0 < args.learning_rate < 1.0:
        parser.error(f"--learning-rate must be in (0, 1), got {args.learning_rate}")
    if args.weights is not None and args.weights != "imagenet":
        if not args.weights.endswith(".weights.h5"):
            parser.error(f"--weights must be 'imagenet' or a .weights.h5 file, got {args.weights!r}")
        if not os.path.isfile(args.weights):
            parser.error(f"--weights file not found: {args.weights}")
    if args.output_dir is None:
        args.output_dir = pathlib.Path("runs") / datetime.datetime.now().strftime("quickstart-%Y%m%d-%H%M%S")
    if args.output_dir.exists() and (not args.output_dir.is_dir() or any(args.output_dir.iterdir())):
        parser.error(f"--output-dir {args.output_dir} exists and is not empty; give a new one")
    return args


# TensorFlow's C++ log lines that say nothing about this run: its start-up notices on a
# machine without a GPU (absl prints them before TF_CPP_MIN_LOG_LEVEL is read), and tf.data's
# note that the GeneratorDataset inside tf.distribute's multi-device iterator (TensorFlow's,
# not ours) cannot be graph-optimised. C++ writes straight to file descriptor 2, where no
# Python filter reaches: `quiet_stderr` drops exactly these lines and passes everything else.
PREFIX = r"[IWEF]\d{4} [\d:.]+ +\d+ "  # absl's: severity and date, time, thread
TENSORFLOW_NOISE = re.compile(
    "|".join(
        [
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            PREFIX + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine",
            PREFIX + r"cuda_platform\.cc:\d+\] failed call to cuInit: .*\(303\)",
            PREFIX + r"cuda_executor\.cc:\d+\] .*(CUDA_ERROR_NO_DEVICE|no NVIDIA GPU)",
            PREFIX + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use",
            r"To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.",
            PREFIX + r"dataset\.cc:\d+\] Input of GeneratorDatasetOp::Dataset will not be optimized",
        ]
    )
)


@contextlib.contextmanager
def quiet_stderr(verbose):
    """Drops TENSORFLOW_NOISE lines from everything written to stderr (file descriptor 2, so
    C++ and subprocesses too) while in the block; prints how many at the end."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    dropped, relay_to = [], os.dup(real_stderr)

    def relay():
        with os.fdopen(read_end, "rb") as lines, os.fdopen(relay_to, "wb", buffering=0) as out:
            for line in lines:
                if TENSORFLOW_NOISE.match(line.decode(errors="replace").strip()):
                    dropped.append(line)
                else:
                    out.write(line)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # closes the pipe's last write end: the relay reads to its end
        os.close(real_stderr)
        thread.join(timeout=10)
        if dropped:
            print(f"({len(dropped)} TensorFlow start-up and tf.data log lines hidden; --verbose shows them)")


class Progress:
    """Numbered step headers, with the time since the start."""

    def __init__(self, steps):
        self.steps, self.done, self.start = steps, 0, time.monotonic()

    def step(self, text):
        self.done += 1
        print(f"\n[{self.done}/{self.steps} {time.monotonic() - self.start:5.0f}s] {text}", flush=True)


def configure_devices(cpu_replicas):
    """Splits the CPU into logical devices for MirroredStrategy where there is no GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)


def check_conversion(output_dir):
    """Converts the original code's tiny checkpoint; returns (weights path, max |logit difference|)."""
    import keras_cvt
    from keras_cvt.conversion import convert

    weights = output_dir / "converted" / "cvt_tiny.weights.h5"
    info = convert(CHECKPOINT, weights)
    print(f"converted {CHECKPOINT.name} ({info['tensors']} tensors) -> {weights}", flush=True)
    io = np.load(CHECKPOINT_IO)
    model = keras_cvt.CvT(
        **TINY,
        classes=io["logits"].shape[1],
        weights=str(weights),
        input_shape=(None, None, 3),
        include_preprocessing=False,  # the reference inputs are normalised already
        classifier_activation=None,
    )
    logits = model.predict(io["x"].transpose(0, 2, 3, 1), verbose=0)
    difference = float(np.abs(logits - io["logits"]).max())
    verdict = "OK" if difference <= TOLERANCE else "MISMATCH"
    print(
        f"Keras vs the original PyTorch code on {len(logits)} images of {io['x'].shape[2]}x{io['x'].shape[3]}: "
        f"max |logits difference| {difference:.2e} (tolerance {TOLERANCE:g}, logits std "
        f"{io['logits'].std():.2f}): {verdict}",
        flush=True,
    )
    return weights, difference


def load_digits(seed, size=DIGIT_SIZE):
    """scikit-learn's digits as uint8 RGB size^2 images: (train images, labels), (held out ...)."""
    import sklearn.datasets
    import tensorflow as tf

    digits = sklearn.datasets.load_digits()
    images = tf.image.resize(digits.images[..., None] * (255 / 16), (size, size)).numpy()
    images = np.repeat(np.clip(np.round(images), 0, 255).astype(np.uint8), 3, axis=-1)
    order = np.random.RandomState(seed).permutation(len(images))
    train, held_out = order[HELD_OUT:], order[:HELD_OUT]
    return (images[train], digits.target[train]), (images[held_out], digits.target[held_out])


def fine_tune(args, weights, strategy, digits, architecture=TINY, size=DIGIT_SIZE):
    """Trains the converted model (`architecture`: a variant name or CvT arguments) on the
    digits at `size`; returns (top-1, top-5, steps per epoch, history)."""
    import keras

    from keras_cvt import training

    (train_images, train_labels), (val_images, val_labels) = digits
    keras.utils.set_random_seed(args.seed)
    train_source = training.array_source(train_images, train_labels, 10)
    val_source = training.array_source(val_images, val_labels, 10)
    # Digits are not photos: gentle crops and no flips (a mirrored 2 is no 2).
    augmentation = training.Augmentation(crop_scale=(0.7, 1.0), crop_ratio=(0.9, 1.1), flip=False)
    train_data = training.train_dataset(
        strategy, train_source, size, args.batch_size, augmentation, seed=args.seed
    )
    val_data = training.eval_dataset(strategy, val_source, size, 128, crop_ratio=None)
    val_steps = training.eval_steps(strategy, val_source.num_examples, 128)
    steps = train_source.num_examples // (args.batch_size * strategy.num_replicas_in_sync)
    with strategy.scope():
        model = training.build_model(architecture, 10, size, weights=str(weights), drop_path_rate=0.0)
        # A few epochs, not the recipe's 300: a higher peak and one warm-up epoch.
        schedule = training.recipe_schedule(args.learning_rate, args.epochs, steps, warmup_epochs=1)
        training.compile_model(model, training.make_optimizer(model, schedule))
    training.prepare_for_strategy(model, strategy, size, 10)
    history, _ = training.fit(
        model,
        train_data,
        epochs=args.epochs,
        steps_per_epoch=steps,
        output_dir=str(args.output_dir / "training"),
        strategy=strategy,
        validation_data=val_data,
        validation_steps=val_steps,
        verbose=2,
    )
    top1, top5 = training.evaluate(model, val_data, steps=val_steps)
    return top1, top5, steps, history


def write_pngs(folder, images, labels):
    import tensorflow as tf

    from keras_cvt import atomic

    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / f"{i:02d}_digit_{label}.png"
        atomic.write_bytes(path, tf.io.encode_png(image).numpy())
        paths.append(path)
    return paths


def classify_without_keras(saved_model, files):
    """serving_default's outputs for `files`, from a process that never imports Keras."""
    result = subprocess.run(
        [sys.executable, str(CLIENT), str(saved_model), *map(str, files)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{CLIENT.name} failed (exit status {result.returncode}):\n{result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def keras_top(model, files, image_size, crop_ratio, k):
    """(classes, scores) of the Keras model on `files`, transformed as the SavedModel does."""
    from keras_cvt import images, transforms

    transform = transforms.evaluation_transform(image_size, crop_ratio)
    pixels = np.stack([transform(images.load_image(str(f))).numpy() for f in files])
    probabilities = model.predict(pixels, verbose=0)
    classes = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return classes, np.take_along_axis(probabilities, classes, axis=1)


def serve_and_classify(model, saved_model, files, image_size, crop_ratio, top_k, labels=None):
    """Exports `model`, classifies `files` through serving_default; returns the per-file results."""
    import keras_cvt

    keras_cvt.export_for_serving(
        model, str(saved_model), image_size=image_size, crop_ratio=crop_ratio, top_k=top_k, labels=labels
    )
    print(f"SavedModel for TF Serving: {saved_model}", flush=True)
    served = classify_without_keras(saved_model, files)
    classes, scores = keras_top(model, files, image_size, crop_ratio, top_k)
    for row, keras_classes, keras_scores in zip(served, classes, scores):
        row["keras_classes"] = keras_classes.tolist()
        row["max_score_difference_to_keras"] = float(np.abs(np.array(row["scores"]) - keras_scores).max())
    return served


def run_digits(args, progress, weights):
    import keras_cvt
    from keras_cvt import training

    progress.step(f"Fine-tuning it on scikit-learn's digits for {args.epochs} epochs with model.fit")
    strategy = training.make_strategy("mirrored")
    devices = list(strategy.extended.worker_devices)
    digits = load_digits(args.seed)
    print(
        f"MirroredStrategy over {len(devices)} devices ({', '.join(devices)}); "
        f"{len(digits[0][1])} training and {len(digits[1][1])} held-out digits at {DIGIT_SIZE}x{DIGIT_SIZE}, "
        f"global batch {args.batch_size * len(devices)}",
        flush=True,
    )
    top1, top5, steps, history = fine_tune(args, weights, strategy, digits)
    print(f"held-out top-1 {top1:.4f}, top-5 {top5:.4f}", flush=True)

    progress.step("Exporting for TF Serving and classifying PNG files through serving_default")
    last = args.output_dir / "training" / "checkpoints" / "last.weights.h5"
    # The same weights, taking any image size (what export_for_serving wants).
    model = keras_cvt.CvT(**TINY, classes=10, weights=str(last), input_shape=(None, None, 3))
    (val_images, val_labels) = digits[1]
    files = write_pngs(args.output_dir / "images", val_images[: args.png_files], val_labels[: args.png_files])
    saved_model = args.output_dir / "serving" / "digits" / "1"
    served = serve_and_classify(
        model, saved_model, files, DIGIT_SIZE, None, 3, labels=[str(d) for d in range(10)]
    )
    for row, label in zip(served, val_labels):
        row["true_class"] = int(label)
        print(f"  {pathlib.Path(row['file']).name}: served {row['labels'][0]} ({row['scores'][0]:.3f}), "
              f"Keras {row['keras_classes'][0]}, true {label}", flush=True)
    correct = sum(row["classes"][0] == row["true_class"] for row in served)
    pictures = draw_digits(args.output_dir / "pictures", history, served, model, digits[1])
    logs = args.output_dir / "training" / "logs"
    summary = {
        "training": {
            "devices": devices,
            "epochs": args.epochs,
            "steps_per_epoch": steps,
            "held_out_images": len(val_labels),
            "top1": top1,
            "top5": top5,
        },
        "serving": {"saved_model": str(saved_model), "images": served, "correct": correct},
        "outputs": {
            "converted weights": str(weights),
            "trained weights (last epoch)": str(last),
            "best checkpoint": str(last.parent / "best.weights.h5"),
            "TensorBoard logs": str(logs) if logs.is_dir() else "none (pip install tensorboard)",
            "SavedModel": str(saved_model),
            "PNG files": str(args.output_dir / "images"),
            **pictures,
        },
    }
    return summary, 0


def draw_digits(folder, history, served, model, held_out):
    """The pictures of the digits run (needs matplotlib, the `plots` extra): training curves,
    the digits classified through the SavedModel, and the confusion matrix of the Keras model on
    every held-out digit. Returns {what: path}."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return {"pictures": "none (pip install matplotlib, or keras-cvt[plots])"}
    from keras_cvt import images, plots

    images_, labels = held_out
    paths = {"training curves": plots.save(plots.training_curves(history), folder / "training_curves.png")}
    digits = [images.load_image(row["file"]).numpy() for row in served]
    wrong = [row["classes"][0] != row["true_class"] for row in served]
    titles = [
        f"served {row['labels'][0]} ({row['scores'][0]:.2f})" + (f"\nWRONG: is {row['true_class']}" if bad else "")
        for row, bad in zip(served, wrong)
    ]
    grid = plots.overlay_grid(digits, None, titles, columns=8, cell=(130, 150), marked=wrong)
    paths["classified digits"] = plots.save(grid, folder / "served_digits.png")
    predicted = model.predict(images_.astype("float32"), verbose=0).argmax(axis=1)
    figure, _ = plots.confusion_matrix(labels, predicted, [str(d) for d in range(10)])
    paths["confusion matrix"] = plots.save(figure, folder / "confusion_matrix.png")
    return {name: str(path) for name, path in paths.items()}


def run_pretrained(args, progress, weights):
    import keras_cvt
    from keras_cvt import pretrained

    progress.step(f"Loading CvT-13 with weights {args.weights}")
    try:
        # Any image size: the SavedModel resizes as the weights' evaluation transform says.
        model = keras_cvt.CvT13(weights=args.weights, input_shape=(None, None, 3))
    except OSError as error:  # the hub's errors say how to download by hand
        print(f"quickstart: could not load CvT-13 weights {args.weights!r}: {error}", file=sys.stderr)
        return None, 2
    transform = pretrained.transform_for("cvt13", args.weights)
    image_size, crop_ratio = transform.size, transform.crop_ratio

    progress.step("Exporting for TF Serving and classifying the sample photos through serving_default")
    files = sorted(PHOTOS.glob("*.jpg"))
    saved_model = args.output_dir / "serving" / "cvt13" / "1"
    served = serve_and_classify(model, saved_model, files, image_size, crop_ratio, 5)
    for row in served:
        print(f"  {pathlib.Path(row['file']).name}:", flush=True)
        for label, score in zip(row["labels"], row["scores"]):
            print(f"    {score:7.2%}  {label}", flush=True)
    summary = {
        "serving": {"saved_model": str(saved_model), "images": served},
        "outputs": {"converted weights": str(weights), "SavedModel": str(saved_model), "photos": str(PHOTOS)},
    }
    return summary, 0


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up notices
    with quiet_stderr(args.verbose):
        return run_all(args)


def run_all(args):
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"Writing everything to {args.output_dir.resolve()}", flush=True)
    progress = Progress(3)
    if args.weights is None:
        configure_devices(args.cpu_replicas)  # before any TensorFlow operation
    progress.step("Converting the original code's tiny CvT checkpoint and comparing logits")
    weights, difference = check_conversion(args.output_dir)
    parity = {"checkpoint": str(CHECKPOINT), "max_abs_difference": difference, "tolerance": TOLERANCE}
    if difference > TOLERANCE:
        summary, status = {}, 1
    else:
        run = run_digits if args.weights is None else run_pretrained
        summary, status = run(args, progress, weights)
    if summary is None:
        return status
    summary = {"parity": parity, **summary}
    path = args.output_dir / "summary.json"
    from keras_cvt import atomic

    atomic.write_bytes(path, json.dumps(summary, indent=2).encode())
    print("\nDone." if status == 0 else "\nFAILED: the converted model does not reproduce the original's logits.")
    parity = summary["parity"]
    print(f"  conversion: max |logits difference| to the original code {parity['max_abs_difference']:.2e} "
          f"(tolerance {parity['tolerance']:g})")
    if "training" in summary:
        t = summary["training"]
        print(f"  fine-tuning: {t['epochs']} epochs on {len(t['devices'])} replicas, held-out top-1 "
              f"{t['top1']:.2%} (top-5 {t['top5']:.2%}) on {t['held_out_images']} digits")
    if "serving" in summary:
        s = summary["serving"]
        worst = max(row["max_score_difference_to_keras"] for row in s["images"])
        same = all(row["classes"] == row["keras_classes"] for row in s["images"])
        print(f"  serving: {len(s['images'])} image files through serving_default without Keras; "
              f"{'same classes as' if same else 'CLASSES DIFFER from'} Keras, scores within {worst:.1e}")
    for name, where in summary.get("outputs", {}).items():
        print(f"  {name}: {where}")
    print(f"  summary: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
