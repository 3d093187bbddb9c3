"""keras_cvt against the PyTorch reference (transformers' CvtForImageClassification), side by side.

    python benchmarks/bench.py [--model cvt13] [--size 224] [--reps 5] [--reference DIR]

Measures, in one run on this machine: inference throughput at batch 32 and latency at batch 1
(keras_cvt on TensorFlow in graph mode, as built and as `optimize_for_inference` folds it, the
folded one also with XLA and frozen by `freeze_for_inference`, for batch 1 also frozen with
the batch size fixed; the reference in PyTorch eager mode; latency as the median call of
samples of `--latency-calls` back-to-back calls), one training step (forward + backward +
AdamW) at batch 32 on both sides, the bfloat16 inference path
(`optimize_for_inference(model, dtype="bfloat16")`, also frozen) against the same float32 path
with its top-1 agreement with float32, and the float32 matmul peak of the machine. Both models
have every weight moved off its initial value (`perturb`), as trained weights are.

Every sample of a measure is taken between two samples of what it is compared with (the
reference's same measure; for bfloat16, float32), and compared with their mean: the shared
machine switches between a fast and a slow state every few seconds (calls of either framework
take about 1.3x as long in the slow one), which a round of all the measures outlasts. The
table gives medians of the samples, and ratios keras_cvt / reference as the median of these
bracketed ratios; it is written as JSON to benchmarks/results/. With `--reference DIR` (or
KERAS_CVT_REFERENCE), the folder of the original code's CvT-13 reference checkpoint
(`cvt13_official_perturbed.pth` and `_io.npz`, not part of the repository), the bfloat16 top-1
agreement is also measured on its weights and images.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.flops import forward_macs  # noqa: E402
from benchmarks.perturbation import perturb  # noqa: E402
from keras_cvt import MODEL_CONFIGS, CvT, freeze_for_inference, optimize_for_inference  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# Seconds between the two frameworks' measures: their spinning thread pools go idle.
PAUSE = 0.2
REFERENCE_FILES = ("cvt13_official_perturbed.pth", "cvt13_official_perturbed_io.npz")


def warm_up(measures, calls):
    """Calls every `fn` of the `(name, fn)` pairs `calls` times, untimed."""
    for _, fn in measures:
        for _ in range(calls):
            fn()


def time_round_robin(groups, reps, warmup):
    """Seconds per call of each callable in every turn (a list of `reps` samples per name),
    timed in turns so that drifts of a shared machine's speed hit every measure alike.
    `groups`: lists of `(name, fn)` run one group after the other in each turn (TensorFlow,
    then PyTorch: their thread pools never overlap); a `fn` made by `repeated` gives its own
    per-call time."""
    for group in groups:
        warm_up(group, warmup)
    times = {name: [] for group in groups for name, _ in group}
    for _ in range(reps):
        for group in groups:
            for name, fn in group:
                start = time.perf_counter()
                per_call = fn()
                elapsed = time.perf_counter() - start
                times[name].append(per_call if getattr(fn, "per_call", False) else elapsed)
            time.sleep(PAUSE)
    return times


def time_bracketed(reference, measures, turns, warmup):
    """Samples of each of `measures` (`(name, fn)` pairs, like `reference`; every `fn` returns
    its seconds, as those made by `repeated` do), each taken between two samples of
    `reference`. Returns `(times, ratios)`: the samples of every name, and for each of
    `measures` its samples divided by the mean of the two reference samples around them, a
    comparison within a few seconds."""
    warm_up([reference] + measures, warmup)
    times = {name: [] for name, _ in [reference] + measures}

    def sample(name, fn):
        time.sleep(PAUSE)
        times[name].append(fn())
        return times[name][-1]

    ratios = {name: [] for name, _ in measures}
    before = sample(*reference)
    for _ in range(turns):
        for name, fn in measures:
            value = sample(name, fn)
            after = sample(*reference)
            ratios[name].append(value / ((before + after) / 2))
            before = after
    return times, ratios


def paired_ratio(samples, reference):
    """Median over turns of `reference / samples`: each sample is compared with the reference
    timed in the same turn, so that a slow stretch of the machine cancels out."""
    return statistics.median(r / s for s, r in zip(samples, reference))


def matmul_peak_gflops(reps):
    n = 4096
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    samples = time_round_robin([[("matmul", lambda: matmul().numpy())]], reps, 2)["matmul"]
    seconds = statistics.median(samples)
    return 2 * n**3 / seconds / 1e9


def keras_model(config, size, classes=1000):
    """A model of `config` with every weight moved off its initial value (`perturb`)."""
    model = CvT(
        config["depths"], config["embed_dims"], config["num_heads"],
        include_preprocessing=False, classifier_activation=None,
        input_shape=(size, size, 3), classes=classes,
    )
    perturb(model.weights, lambda w: w.numpy(), lambda w, v: w.assign(v), lambda w: w.path)
    return model


def repeated(fn, calls):
    """One sample of `calls` back-to-back calls, each timed: the sample is their median, the
    latency of a typical call. A shared machine's bursts of load last about a second, so they
    spoil a few calls of a sample rather than the whole of it."""

    def run():
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    run.per_call = True
    return run


def add_arguments(parser, reps):
    """The arguments every benchmark here takes: model, input size, batch, timing."""
    parser.add_argument("--model", choices=sorted(MODEL_CONFIGS), default="cvt13")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--latency-calls", type=int, default=10,
                        help="batch-1 calls per timed sample of the latency measures")
    parser.add_argument("--latency-turns", type=int, default=15,
                        help="samples of each latency measure, each between two of the reference")


def keras_measures(model, size, batch, latency_calls):
    """`(name, fn)` pairs, each `fn` returning its seconds per call: inference of the model as
    built, of `optimize_for_inference` copies (float32, XLA, bfloat16; float32 and bfloat16 also
    frozen, float32 for batch 1 also frozen with that batch size, which makes every shape
    static), and a training step."""
    x = tf.random.uniform((batch, size, size, 3))
    x1 = x[:1]
    folded = optimize_for_inference(model)
    fast = optimize_for_inference(model, dtype="bfloat16")
    forwards = {name: tf.function(lambda x, net=net: net(x, training=False), jit_compile=jit)
                for name, net, jit in (("graph", model, False), ("folded", folded, False),
                                       ("xla", folded, True), ("bf16", fast, False))}
    forwards["frozen"] = freeze_for_inference(folded)
    forwards["bf16_frozen"] = freeze_for_inference(fast)
    measures = []
    for name, forward in forwards.items():
        measures.append((f"keras_{name}_b{batch}_s", repeated(lambda f=forward: f(x).numpy(), 1)))
        if not name.startswith("bf16"):
            measures.append((f"keras_{name}_b1_s", repeated(lambda f=forward: f(x1).numpy(), latency_calls)))
    frozen_b1 = freeze_for_inference(folded, batch_size=1)
    measures.append(
        ("keras_frozen_static_b1_s", repeated(lambda: frozen_b1(x1).numpy(), latency_calls))
    )

    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    labels = tf.random.uniform((batch,), maxval=1000, dtype=tf.int32)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    measures.append((f"keras_train_b{batch}_s", repeated(lambda: train_step(x, labels).numpy(), 1)))
    return measures


def bfloat16_agreement(config, size, reference):
    """Top-1 agreement of the bfloat16 copy with float32, on the CvT-13 weights and inputs of the
    `reference` folder (the two reference images and 30 normalised-range noise images); None
    without a reference or for another model."""
    if reference is None or config is not MODEL_CONFIGS["cvt13"]:
        return None
    checkpoint = reference / REFERENCE_FILES[0]
    from keras_cvt.conversion import convert

    model = keras_model(config, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ref.weights.h5")
        convert(checkpoint, path, model="cvt13")
        model.load_weights(path)
    fast = optimize_for_inference(model, dtype="bfloat16")
    reference_x = np.load(reference / REFERENCE_FILES[1])["x"].transpose(0, 2, 3, 1)
    noise = np.random.RandomState(0).normal(size=(30,) + reference_x.shape[1:]).astype("float32")
    inputs = tf.image.resize(np.concatenate([reference_x, noise]), (size, size))
    top_float = np.argmax(model.predict(inputs, verbose=0), axis=-1)
    top_bf16 = np.argmax(fast.predict(inputs, verbose=0), axis=-1)
    return float(np.mean(top_float == top_bf16))


def torch_measures(config, size, batch, latency_calls):
    """`(name, fn)` pairs of the reference, as `keras_measures`: inference and a training step."""
    import torch
    from transformers import CvtConfig, CvtForImageClassification

    torch.set_num_threads(os.cpu_count())
    model = CvtForImageClassification(
        CvtConfig(embed_dim=list(config["embed_dims"]), depth=list(config["depths"]),
                  num_heads=list(config["num_heads"]), num_labels=1000)
    )
    with torch.no_grad():
        floating = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
        perturb(floating, lambda w: w[1].numpy(), lambda w, v: w[1].copy_(torch.from_numpy(v)),
                lambda w: w[0])
    x = torch.rand(batch, 3, size, size)
    x1 = x[:1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    labels = torch.randint(0, 1000, (batch,))

    def infer(inputs):
        model.eval()
        with torch.inference_mode():
            return model(inputs).logits

    def train_step():
        model.train()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).logits, labels)
        loss.backward()
        optimizer.step()

    return [
        (f"torch_eager_b{batch}_s", repeated(lambda: infer(x), 1)),
        ("torch_eager_b1_s", repeated(lambda: infer(x1), latency_calls)),
        (f"torch_train_b{batch}_s", repeated(train_step, 1)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, reps=5)
    parser.add_argument("--reference", type=pathlib.Path, default=os.environ.get("KERAS_CVT_REFERENCE"),
                        help="folder of the CvT-13 reference, for the bfloat16 agreement "
                        "(default: $KERAS_CVT_REFERENCE; without it, not measured)")
    args = parser.parse_args(argv)
    if args.reference is not None:
        absent = [name for name in REFERENCE_FILES if not (args.reference / name).is_file()]
        if absent:
            print(f"{parser.prog}: error: the CvT-13 reference folder {args.reference} has no "
                  f"{' and no '.join(absent)}", file=sys.stderr)
            return 2
    config = MODEL_CONFIGS[args.model]
    b = args.batch

    peak = matmul_peak_gflops(args.reps)
    gflop_per_image = 2 * forward_macs(config["depths"], config["embed_dims"], args.size) / 1e9
    model = keras_model(config, args.size)
    measures = dict(keras_measures(model, args.size, b, args.latency_calls))
    measures.update(torch_measures(config, args.size, b, args.latency_calls))
    # (reference, what is compared with it, samples of each): each sample of the latter is
    # taken between two of the reference's.
    comparisons = [
        ("torch_eager_b1_s", [n for n in measures if n.startswith("keras_") and "_b1_" in n],
         args.latency_turns),
        (f"torch_eager_b{b}_s", [f"keras_{n}_b{b}_s" for n in ("graph", "folded", "frozen", "xla")],
         args.reps),
        (f"torch_train_b{b}_s", [f"keras_train_b{b}_s"], args.reps),
        (f"keras_folded_b{b}_s", [f"keras_bf16_b{b}_s"], args.reps),
        (f"keras_frozen_b{b}_s", [f"keras_bf16_frozen_b{b}_s"], args.reps),
    ]
    samples, time_ratios = {}, {}
    for reference, names, turns in comparisons:
        times, ratios = time_bracketed(
            (reference, measures[reference]), [(n, measures[n]) for n in names], turns, args.warmup
        )
        for name, values in times.items():
            samples.setdefault(name, []).extend(values)
        time_ratios.update(ratios)
    seconds = {name: statistics.median(t) for name, t in samples.items()}
    bf16_agreement = bfloat16_agreement(config, args.size, args.reference)

    ceiling = peak / gflop_per_image  # images/s a forward pass could reach at the matmul peak
    rows = []

    def row(name, key, images):
        """A table row; a compared measure gets the median of its bracketed ratios, as a time
        ratio for latency (lower is better), else as a throughput ratio (higher is better)."""
        value = seconds[key]
        rate = images / value
        ratio = None
        if key in time_ratios:
            ratio = statistics.median(r if "_b1_" in key else 1 / r for r in time_ratios[key])
        rows.append({"measure": name, "seconds": value, "images_per_s": rate,
                     "pct_of_ceiling": 100 * rate / ceiling, "ratio_vs_reference": ratio})

    row(f"torch eager, batch {b}", f"torch_eager_b{b}_s", b)
    row(f"keras graph, batch {b}", f"keras_graph_b{b}_s", b)
    row(f"keras folded graph, batch {b}", f"keras_folded_b{b}_s", b)
    row(f"keras folded frozen, batch {b}", f"keras_frozen_b{b}_s", b)
    row(f"keras folded xla, batch {b}", f"keras_xla_b{b}_s", b)
    row("torch eager, batch 1 latency", "torch_eager_b1_s", 1)
    row("keras graph, batch 1 latency", "keras_graph_b1_s", 1)
    row("keras folded graph, batch 1 latency", "keras_folded_b1_s", 1)
    row("keras folded frozen, batch 1 latency", "keras_frozen_b1_s", 1)
    row("  the same, frozen for batch size 1", "keras_frozen_static_b1_s", 1)
    row("keras folded xla, batch 1 latency", "keras_xla_b1_s", 1)
    row(f"torch train step, batch {b}", f"torch_train_b{b}_s", b)
    row(f"keras train step, batch {b}", f"keras_train_b{b}_s", b)
    row(f"keras bfloat16 folded, batch {b}", f"keras_bf16_b{b}_s", b)
    row(f"keras bfloat16 frozen, batch {b}", f"keras_bf16_frozen_b{b}_s", b)

    print(f"{args.model} at {args.size}: {gflop_per_image / 2:.2f} GMAC/image; float32 matmul peak "
          f"{peak:.0f} GFLOP/s, so at most {ceiling:.1f} images/s (training steps: 3x the forward work)")
    print(f"{'measure':38s} {'seconds':>9s} {'images/s':>9s} {'% ceil':>7s} {'ratio':>7s}")
    for r in rows:
        ratio = f"{r['ratio_vs_reference']:.2f}x" if r["ratio_vs_reference"] is not None else "ref"
        print(f"{r['measure']:38s} {r['seconds']:9.4f} {r['images_per_s']:9.2f} {r['pct_of_ceiling']:6.1f}% {ratio:>7s}")
    print("ratios: the median over samples, each compared with the mean of the two reference "
          "samples taken just before and after it; throughput keras / reference (higher is "
          "better), latency keras / reference (lower is better); bfloat16 rows: bfloat16 / "
          "float32 throughput of the same form (folded; frozen); folded: "
          "keras_cvt.optimize_for_inference; frozen: keras_cvt.freeze_for_inference of the "
          "folded model (for batch size 1: freeze_for_inference(folded, batch_size=1))")
    if bf16_agreement is not None:
        print(f"bfloat16 top-1 agreement with float32 on the reference inputs: {bf16_agreement:.1%}")
    elif args.model == "cvt13":
        print("bfloat16 top-1 agreement not measured: no CvT-13 reference (--reference DIR or KERAS_CVT_REFERENCE)")

    report = {
        "model": args.model, "size": args.size, "batch": b, "reps": args.reps,
        "latency_calls": args.latency_calls, "latency_turns": args.latency_turns,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "matmul_peak_gflops": peak, "gmac_per_image": gflop_per_image / 2, "ceiling_images_per_s": ceiling,
        "bf16_top1_agreement": bf16_agreement, "rows": rows, "samples_s": samples,
        "compared_with": {name: reference for reference, names, _ in comparisons for name in names},
        "time_ratios": time_ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.model}_{args.size}.json"
    fd, tmp = tempfile.mkstemp(dir=RESULTS, suffix=".json.partial")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
