"""keras_cvt's `LayerNorm` against Keras' `LayerNormalization` inside the folded CvT, side by side.

    python benchmarks/layernorm_ab.py [--model cvt13] [--size 224] [--reps 7]

Whole-model differences of a few percent are smaller than the drift between two runs on a
shared machine, so this measures them in one process, in turns: the same folded model (float32
at batch 32 and batch 1, bfloat16 at batch 32) traced once with each LayerNorm form (the
`LayerNorm.call` in place while a graph is traced is the one the graph keeps), then timed
round-robin. Prints medians and the ratios Keras' form / ours (median over turns of the ratio
within each turn; above 1: ours is faster).
"""

import argparse
import pathlib
import statistics
import sys

import keras
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks.bench import add_arguments, keras_model, paired_ratio, repeated, time_round_robin  # noqa: E402
from keras_cvt import MODEL_CONFIGS, LayerNorm, optimize_for_inference  # noqa: E402

FORMS = {"keras": keras.layers.LayerNormalization.call, "ours": LayerNorm.call}


def measures(model, size, batch, latency_calls):
    x = tf.random.uniform((batch, size, size, 3))
    x1 = x[:1]
    result = []
    for dtype in ("float32", "bfloat16"):
        net = optimize_for_inference(model, dtype)
        for form, call in FORMS.items():
            LayerNorm.call = call
            try:
                forward = tf.function(lambda x, net=net: net(x, training=False))
                forward(x).numpy()
                forward(x1).numpy()
            finally:
                LayerNorm.call = FORMS["ours"]
            result.append((f"{dtype} batch {batch}|{form}", lambda f=forward: f(x).numpy()))
            if dtype == "float32":
                result.append((f"{dtype} batch 1|{form}", repeated(lambda f=forward: f(x1).numpy(), latency_calls)))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, reps=7)
    args = parser.parse_args(argv)
    model = keras_model(MODEL_CONFIGS[args.model], args.size)
    samples = time_round_robin([measures(model, args.size, args.batch, args.latency_calls)], args.reps, args.warmup)
    print(f"{'folded model':24s} {'keras (s)':>10s} {'ours (s)':>10s} {'keras / ours':>13s}")
    for measure in dict.fromkeys(key.split("|")[0] for key in samples):
        theirs, ours = samples[f"{measure}|keras"], samples[f"{measure}|ours"]
        print(f"{measure:24s} {statistics.median(theirs):10.4f} {statistics.median(ours):10.4f} "
              f"{paired_ratio(ours, theirs):12.3f}x")


if __name__ == "__main__":
    main()
