"""keras_cvt's deployment paths against HuggingFace's CvT on the runtimes users deploy to.

    python benchmarks/runtimes.py [--model cvt13] [--size 224] [--rounds 9] [--latency-calls 10]
        [--groups 0,1,2,3] [--calibration-size 32]

Measures, in one run, batch-1 latency and batch-32 throughput of

- ours: TensorFlow, `freeze_for_inference(optimize_for_inference(m))` in float32 (the common
  reference) and in bfloat16; the `keras_cvt.export` files on ONNX Runtime, OpenVINO (float32
  and bfloat16 inference precision) and LiteRT (XNNPACK);
- HuggingFace's `CvtForImageClassification` with the same weights: PyTorch eager,
  `torch.compile`, PyTorch bfloat16 autocast, and its ONNX file (`torch.onnx.export`) on ONNX
  Runtime and OpenVINO (float32 and bfloat16);
- int8, both sides calibrated on the same images (`--calibration-size` of the photos in
  examples/images, repeated, through the evaluation transform; the speed does not depend on
  them, the accuracy is tests/test_int8.py's): ours, `export(..., quantize="int8")` on OpenVINO
  (NNCF), ONNX Runtime (static QDQ) and LiteRT; HF's ONNX file quantized as its users would, by
  NNCF's transformer preset on OpenVINO and by ONNX Runtime's `quantize_static` (QDQ,
  per-channel weights).

The CPU's int8 and bfloat16 features (AVX-512 VNNI, AVX-VNNI, AVX-512 BF16, AMX) are printed
with the results and stored in the JSON: the int8 speed-ups depend on them.

Both sides have every weight moved off its initial value (as trained weights are: see
`bench.perturb`); ours are converted from HF's by `keras_cvt.conversion.convert`, and the run
first checks that the two give the same logits. Ours take pixels in [0, 255] with the
normalisation (and, for the export files, the softmax) inside; HF's take normalised pixels.
The export files have a fixed height and width (`--size`) and a free batch, as HF's ONNX file.

Each system runs in a process of its own, beside the process of the reference; every sample
of a system is taken between two samples of the reference and divided by their mean, which
cancels the drifts of a shared machine's speed (tens of percent within a minute). That
cancelling is not exact across runtimes (a slow spell of the host slows OpenVINO's thread pool
more than TensorFlow's), so the systems run in groups (`GROUPS`), all of a group's processes at
once (all twelve would not fit this machine's memory), their samples taken in turn, round after
round: the systems of a group meet the same states of the machine, and the fastest paths of
both sides, which the targets compare, share a group. A batch-1 sample is the median of
`--latency-calls` calls; a batch-32 sample is one call. The table gives each system's median
sample and the median of its bracketed ratios; "time / ours" and "images/s / ours" are against
the reference. Written as JSON to benchmarks/results/runtimes_<model>_<size>.json (or `--results`).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.perturbation import perturb  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = "ours_tf_frozen_f32"
# (name, side, precision, what it is)
SYSTEMS = (
    (REFERENCE, "ours", "f32", "TensorFlow, freeze_for_inference(optimize_for_inference(m), batch_size=b)"),
    ("ours_tf_frozen_bf16", "ours", "bf16", "the same, optimize_for_inference(m, dtype='bfloat16')"),
    ("ours_onnxruntime", "ours", "f32", "export(format='onnx') on ONNX Runtime"),
    ("ours_openvino_f32", "ours", "f32", "export(format='openvino'), OpenVINO float32"),
    ("ours_openvino_bf16", "ours", "bf16", "the same, OpenVINO bfloat16"),
    ("ours_litert", "ours", "f32", "export(format='tflite') on LiteRT (XNNPACK)"),
    ("hf_torch_eager", "hf", "f32", "PyTorch eager"),
    ("hf_torch_compile", "hf", "f32", "torch.compile"),
    ("hf_torch_bf16", "hf", "bf16", "PyTorch bfloat16 autocast"),
    ("hf_onnxruntime", "hf", "f32", "torch.onnx.export on ONNX Runtime"),
    ("hf_openvino_f32", "hf", "f32", "the same ONNX file, OpenVINO float32"),
    ("hf_openvino_bf16", "hf", "bf16", "the same, OpenVINO bfloat16"),
    ("ours_openvino_int8", "ours", "int8", "export(format='openvino', quantize='int8') (NNCF) on OpenVINO"),
    ("ours_onnxruntime_int8", "ours", "int8", "export(format='onnx', quantize='int8') (static QDQ) on ONNX Runtime"),
    ("ours_litert_int8", "ours", "int8", "export(format='tflite', quantize='int8') on LiteRT (XNNPACK)"),
    ("hf_openvino_int8", "hf", "int8", "its ONNX file quantized by NNCF (transformer preset), OpenVINO"),
    ("hf_onnxruntime_int8", "hf", "int8", "its ONNX file quantized by ONNX Runtime (static QDQ, per channel)"),
)
# The groups, in the order of measurement: the slowest to start (torch.compile: minutes) last, so
# that a run cut short still has the rest; a report is written after each group.
GROUPS = (
    (REFERENCE,),
    (
        "ours_openvino_int8",
        "hf_openvino_int8",
        "ours_onnxruntime_int8",
        "hf_onnxruntime_int8",
        "ours_litert_int8",
    ),
    (
        "ours_openvino_f32",
        "hf_openvino_f32",
        "ours_litert",
        "ours_openvino_bf16",
        "hf_openvino_bf16",
        "ours_onnxruntime",
        "hf_onnxruntime",
    ),
    ("ours_tf_frozen_bf16", "hf_torch_bf16", "hf_torch_eager", "hf_torch_compile"),
)
BATCHES = (1, 32)
PAUSE = 0.2  # seconds between two processes' samples: their spinning thread pools go idle


# The int8 and bfloat16 features of x86 CPUs, as /proc/cpuinfo names them.
CPU_FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_features():
    """{feature: present} for CPU_FEATURES, from /proc/cpuinfo (None where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    return {feature: feature in flags for feature in CPU_FEATURES}


# The features that give int8 its speed: multiply-adds of int8 in one instruction.
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_caveat(features):
    """A sentence for the int8 results of a CPU without INT8_FEATURES (None on one with them):
    its int8 ratios do not speak for the VNNI servers that the int8 targets are about."""
    if features is None:
        return "the CPU's features are unknown: the int8 ratios may not speak for a VNNI CPU"
    if any(features[f] for f in INT8_FEATURES):
        return None
    return (
        "this CPU has no int8 dot-product instructions (no AVX-512 VNNI, AVX-VNNI or AMX): its int8 "
        "kernels emulate them, so the int8 ratios here say nothing about the int8 targets, which "
        "need a VNNI CPU"
    )


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() is often just the
    architecture); None where it is not readable."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def calibration_pixels(size, count):
    """`count` calibration images: the photos of examples/images, in turn, transformed as
    CvT-13's ImageNet checkpoint was evaluated."""
    from keras_cvt import images, transforms
    from keras_cvt.pretrained import DEFAULT_TRANSFORM

    transform = transforms.evaluation_transform(size, DEFAULT_TRANSFORM.crop_ratio)
    photos = [transform(images.load_image(str(p))).numpy() for p in sorted((ROOT / "examples" / "images").glob("*.jpg"))]
    return np.stack([photos[i % len(photos)] for i in range(count)])


def quantize_hf(directory, calibration):
    """HF's ONNX file quantized as its users would: NNCF's transformer preset (OpenVINO IR) and
    ONNX Runtime's static QDQ quantization with per-channel weights."""
    import nncf
    import openvino
    from onnxruntime import quantization

    from keras_cvt.preprocessing import imagenet_normalize

    batches = [np.ascontiguousarray(imagenet_normalize(x[None]).transpose(0, 3, 1, 2)) for x in calibration]
    model = openvino.Core().read_model(str(directory / "hf.onnx"))
    quantized = nncf.quantize(
        model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches)
    )
    openvino.save_model(quantized, str(directory / "hf_int8.xml"), compress_to_fp16=False)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    quantization.quantize_static(
        str(directory / "hf.onnx"),
        str(directory / "hf_int8.onnx"),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
    )


def prepare(directory, variant, size, calibration_size):
    """Writes HF's perturbed checkpoint, our converted weights, our export files (float32 and
    int8) and HF's ONNX files (float32 and int8) into `directory`; returns the largest logit
    difference between the two models."""
    import torch
    from transformers import CvtConfig, CvtForImageClassification

    from keras_cvt import architectures, builder
    from keras_cvt.export import export
    from keras_cvt.preprocessing import imagenet_normalize
    from keras_cvt.conversion import convert

    def normalised_nchw(pixels):
        return np.ascontiguousarray(imagenet_normalize(pixels).transpose(0, 3, 1, 2))

    config = architectures.VARIANTS[variant].config
    hf = CvtForImageClassification(
        CvtConfig(
            embed_dim=list(config["embed_dims"]),
            depth=list(config["depths"]),
            num_heads=list(config["num_heads"]),
            num_labels=1000,
        )
    ).eval()
    with torch.no_grad():
        floating = [(n, t) for n, t in hf.state_dict().items() if t.is_floating_point()]
        perturb(floating, lambda w: w[1].numpy(), lambda w, v: w[1].copy_(torch.from_numpy(v)), lambda w: w[0])
    hf.save_pretrained(directory / "hf")
    weights = directory / "ours.weights.h5"
    convert(directory / "hf" / "model.safetensors", weights, model=variant)
    ours = builder.CvT(**config, weights=str(weights), input_shape=(size, size, 3), classifier_activation=None)
    rng = np.random.default_rng(0)
    # The inputs of the workers, which then need neither Keras nor keras_cvt.
    for b in BATCHES:
        pixels = rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)
        np.save(directory / f"pixels_{b}.npy", pixels)
        np.save(directory / f"normalised_{b}.npy", normalised_nchw(pixels))
    with torch.inference_mode():
        theirs = hf(torch.from_numpy(normalised_nchw(pixels))).logits.numpy()
    difference = float(np.abs(ours.predict(pixels, verbose=0) - theirs).max())
    for name, suffix in (("onnx", ".onnx"), ("openvino", ".xml"), ("tflite", ".tflite")):
        export(ours, directory / f"ours{suffix}", format=name, input_size=size)
    torch.onnx.export(
        hf,
        (torch.from_numpy(normalised_nchw(pixels[:1])),),
        str(directory / "hf.onnx"),
        input_names=["pixel_values"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
    )
    calibration = calibration_pixels(size, calibration_size)
    for name, suffix in (("openvino", ".xml"), ("onnx", ".onnx"), ("tflite", ".tflite")):
        export(ours, directory / f"ours_int8{suffix}", format=name, input_size=size, quantize="int8", calibration=calibration)
    quantize_hf(directory, calibration)
    return difference


def load(system, directory, variant, size):
    """A function `batch -> output` of `system`, its inputs made once per batch."""
    threads = os.cpu_count()
    pixels = {b: np.load(directory / f"pixels_{b}.npy") for b in BATCHES}
    normalised = {b: np.load(directory / f"normalised_{b}.npy") for b in BATCHES}
    if system.startswith("ours_tf"):
        import tensorflow as tf

        from keras_cvt import architectures, builder, freeze_for_inference, optimize_for_inference

        model = builder.CvT(
            **architectures.VARIANTS[variant].config,
            weights=str(directory / "ours.weights.h5"),
            input_shape=(size, size, 3),
            classifier_activation=None,
        )
        folded = optimize_for_inference(model, dtype="bfloat16" if "bf16" in system else None)
        # One function per batch size: static shapes, TensorFlow's fastest form of each.
        frozen = {b: freeze_for_inference(folded, batch_size=b) for b in BATCHES}
        inputs = {b: tf.constant(x) for b, x in pixels.items()}
        return lambda b: frozen[b](inputs[b]).numpy()
    if system.startswith("hf_torch"):
        import torch
        from transformers import CvtForImageClassification

        torch.set_num_threads(threads)
        model = CvtForImageClassification.from_pretrained(directory / "hf").eval()
        inputs = {b: torch.from_numpy(x) for b, x in normalised.items()}
        forward = torch.compile(model) if system == "hf_torch_compile" else model

        def run(b):
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=system == "hf_torch_bf16"):
                return forward(pixel_values=inputs[b]).logits.float().numpy()

        return run
    ours = system.startswith("ours_")
    feeds = {b: {"pixels": pixels[b]} if ours else {"pixel_values": normalised[b]} for b in BATCHES}
    int8 = system.endswith("_int8")
    stem = ("ours" if ours else "hf") + ("_int8" if int8 else "")
    if "onnxruntime" in system:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(directory / f"{stem}.onnx"), options, providers=["CPUExecutionProvider"])
        return lambda b: session.run(None, feeds[b])[0]
    if "openvino" in system:
        import openvino

        # int8 files compute in int8 where NNCF put quantizers, in float32 elsewhere.
        precision = "bf16" if system.endswith("bf16") else "f32"
        path = directory / (f"{stem}.xml" if ours or int8 else "hf.onnx")
        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        )
        request = compiled.create_infer_request()
        return lambda b: request.infer(feeds[b])[0]
    if system.startswith("ours_litert"):
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(directory / f"{stem}.tflite"), num_threads=threads).get_signature_runner()
        return lambda b: runner(**feeds[b])["probabilities"]
    raise ValueError(f"unknown system {system!r}")


def worker(system, directory, variant, size):
    """Serves timing requests on stdin: `batch calls` -> the median seconds of `calls` calls."""
    run = load(system, pathlib.Path(directory), variant, size)
    for b in BATCHES:  # warm-up: compilation, memory plans, caches
        for _ in range(2):
            run(b)
    print("ready", flush=True)
    for line in sys.stdin:
        batch, calls = map(int, line.split())
        seconds = []
        for _ in range(calls):
            start = time.perf_counter()
            run(batch)
            seconds.append(time.perf_counter() - start)
        print(statistics.median(seconds), flush=True)


class Process:
    def __init__(self, system, args, directory):
        self.system = system
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                system,
                "--directory",
                str(directory),
                "--model",
                args.model,
                "--size",
                str(args.size),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{system} did not start (exit status {self.process.wait()})")

    def sample(self, batch, calls):
        time.sleep(PAUSE)
        self.process.stdin.write(f"{batch} {calls}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def measure(args, directory, done):
    """Per group (`GROUPS`), in turn: starts its systems' processes, takes `--rounds` rounds of
    samples at each batch, a sample of each system per round, each between two samples of the
    reference's process, stops them and calls `done(samples, ratios, start_seconds, began)` with
    what has been measured so far."""
    calls = {1: args.latency_calls, 32: 1}
    # The load average says how busy the shared machine was (2 would be these cores, full).
    began = f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}"
    reference = Process(REFERENCE, args, directory)
    samples = {name: {b: [] for b in BATCHES} for name, *_ in SYSTEMS}
    ratios = {name: {b: [] for b in BATCHES} for name, *_ in SYSTEMS}
    started = {}
    try:
        for index, group in enumerate(GROUPS):
            if index not in args.groups:
                continue
            systems = {}
            try:
                for name in group:
                    begin = time.time()
                    systems[name] = reference if name == REFERENCE else Process(name, args, directory)
                    started[name] = time.time() - begin
                    print(f"{name}: started in {started[name]:.0f} s", file=sys.stderr, flush=True)
                for b in BATCHES:
                    before = reference.sample(b, calls[b])
                    samples[REFERENCE][b].append(before)
                    for _ in range(args.rounds):
                        for name, system in systems.items():
                            value = system.sample(b, calls[b])
                            after = reference.sample(b, calls[b])
                            samples[name][b].append(value)
                            samples[REFERENCE][b].append(after)
                            ratios[name][b].append(value / ((before + after) / 2))
                            before = after
            finally:
                for system in systems.values():
                    if system is not reference:
                        system.close()
            done(samples, ratios, started, began)
    finally:
        reference.close()


def summary(samples, ratios):
    rows = []
    for name, side, precision, description in SYSTEMS:
        if not ratios[name][32]:
            continue  # not measured (a run cut short)
        time_ratio = statistics.median(ratios[name][1])
        rate_ratio = statistics.median(1 / r for r in ratios[name][32])
        rows.append(
            {
                "system": name,
                "side": side,
                "precision": precision,
                "description": description,
                "batch1_ms": 1000 * statistics.median(samples[name][1]),
                "batch32_images_per_s": 32 / statistics.median(samples[name][32]),
                "batch1_time_vs_reference": time_ratio,
                "batch32_rate_vs_reference": rate_ratio,
            }
        )
    targets = {}
    for precision in ("f32", "bf16"):
        # bfloat16 paths compete with everything: a float32 path that is faster counts too.
        allowed = ("f32",) if precision == "f32" else ("f32", "bf16")
        ours = [r for r in rows if r["side"] == "ours" and r["precision"] in allowed]
        peers = [r for r in rows if r["side"] == "hf" and r["precision"] in allowed]
        if ours and peers:
            targets[precision] = _fastest_against(ours, peers, 0.9, 1.2)
    ours_int8 = [r for r in rows if r["side"] == "ours" and r["precision"] == "int8"]
    peers_int8 = [r for r in rows if r["side"] == "hf" and r["precision"] == "int8"]
    if ours_int8 and peers_int8:
        targets["int8"] = _fastest_against(ours_int8, peers_int8, 0.8, 1.3)
        ours_f32 = [r for r in rows if r["side"] == "ours" and r["precision"] == "f32"]
        # Against our fastest float32 path, the reference (1.0 by definition) among them.
        best = max(ours_int8, key=lambda r: r["batch32_rate_vs_reference"])
        fastest = max(ours_f32, key=lambda r: r["batch32_rate_vs_reference"], default=None)
        if fastest is None or fastest["batch32_rate_vs_reference"] < 1.0:
            fastest = {"system": REFERENCE, "batch32_rate_vs_reference": 1.0}
        ratio = best["batch32_rate_vs_reference"] / fastest["batch32_rate_vs_reference"]
        targets["int8"]["batch32_vs_our_float32"] = {
            "ours": best["system"],
            "peer": fastest["system"],
            "rate_ratio": ratio,
            "target": ">= 1.8",
            "met": ratio >= 1.8,
        }
    return rows, targets


def _fastest_against(ours, peers, batch1_most, batch32_least):
    """Our fastest of `ours` against the fastest of `peers`: the batch-1 time ratio (target at
    most `batch1_most`) and the batch-32 images/s ratio (at least `batch32_least`)."""
    best_ours_b1 = min(ours, key=lambda r: r["batch1_time_vs_reference"])
    best_peer_b1 = min(peers, key=lambda r: r["batch1_time_vs_reference"])
    best_ours_b32 = max(ours, key=lambda r: r["batch32_rate_vs_reference"])
    best_peer_b32 = max(peers, key=lambda r: r["batch32_rate_vs_reference"])
    b1 = best_ours_b1["batch1_time_vs_reference"] / best_peer_b1["batch1_time_vs_reference"]
    b32 = best_ours_b32["batch32_rate_vs_reference"] / best_peer_b32["batch32_rate_vs_reference"]
    return {
        "batch1": {
            "ours": best_ours_b1["system"],
            "peer": best_peer_b1["system"],
            "time_ratio": b1,
            "target": f"<= {batch1_most}",
            "met": b1 <= batch1_most,
        },
        "batch32": {
            "ours": best_ours_b32["system"],
            "peer": best_peer_b32["system"],
            "rate_ratio": b32,
            "target": f">= {batch32_least}",
            "met": b32 >= batch32_least,
        },
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cvt13")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=9, help="bracketed samples per system and batch")
    parser.add_argument("--latency-calls", type=int, default=10, help="batch-1 calls per sample")
    parser.add_argument(
        "--directory",
        type=pathlib.Path,
        default=None,
        help="where the prepared files are (made there if absent; default: a temporary folder)",
    )
    parser.add_argument(
        "--groups",
        type=lambda text: {int(g) for g in text.split(",")},
        default=set(range(len(GROUPS))),
        help="the indices of GROUPS to measure, e.g. 0,1 (default: all)",
    )
    parser.add_argument(
        "--calibration-size", type=int, default=32, help="images the int8 files of both sides are calibrated on"
    )
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        default=None,
        help="the JSON file written (default: benchmarks/results/runtimes_<model>_<size>.json)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.directory, args.model, args.size)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.directory or pathlib.Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        marker = directory / "prepared.json"
        if not marker.is_file():
            begin = time.time()
            difference = prepare(directory, args.model, args.size, args.calibration_size)
            marker.write_text(json.dumps({"max_logit_difference": difference, "seconds": time.time() - begin}))
        prepared = json.loads(marker.read_text())
        # HF's MLP uses exact GELU, the original's (and ours) QuickGELU: tests/test_hf_parity.py
        # holds the rest to 1e-4 with QuickGELU swapped into HF's model.
        print(
            f"prepared; ours and HF's logits differ by at most {prepared['max_logit_difference']:.2e} "
            "(HF's exact GELU against QuickGELU)",
            file=sys.stderr,
            flush=True,
        )
        measure(args, directory, lambda *measured: report(args, prepared, *measured))
    return 0


def report(args, prepared, samples, ratios, started, began):
    """Prints the table of what has been measured and writes it as JSON."""
    rows, targets = summary(samples, ratios)
    print(
        f"{args.model} at {args.size}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{args.rounds} rounds, batch 1: median of {args.latency_calls} calls per sample; from {began}, to "
        f"{time.strftime('%H:%M:%S UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}"
    )
    features = cpu_features()
    print(f"CPU: {cpu_model()}")
    print("CPU features: " + (", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()) if features else "unknown"))
    caveat = int8_caveat(features) if any(r["precision"] == "int8" for r in rows) else None
    if caveat:
        print(f"NOTE: {caveat}")
    print("| system | batch 1: ms | time / ours f32 | batch 32: images/s | images/s / ours f32 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['side']}, {r['description']} | {r['batch1_ms']:.1f} | {r['batch1_time_vs_reference']:.2f} | "
            f"{r['batch32_images_per_s']:.1f} | {r['batch32_rate_vs_reference']:.2f} |"
        )
    for precision, target in targets.items():
        for batch, t in target.items():
            value = t.get("time_ratio", t.get("rate_ratio"))
            print(
                f"target {precision} {batch}: {t['ours']} / {t['peer']} = {value:.2f} (target {t['target']}): "
                f"{'met' if t['met'] else 'NOT met'}"
                + (" (no VNNI: not a measurement of this target)" if precision == "int8" and caveat else "")
            )
    result = {
        "model": args.model,
        "size": args.size,
        "rounds": args.rounds,
        "latency_calls": args.latency_calls,
        "started_utc": began,
        "ended_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "load_average_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "cpu_features": features,
        "int8_caveat": caveat,
        "groups": sorted(args.groups),
        "calibration_size": args.calibration_size,
        "machine": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "max_logit_difference": prepared["max_logit_difference"],
        "start_seconds": started,
        "rows": rows,
        "targets": targets,
        "samples_s": samples,
        "ratios": ratios,
    }
    # Here, not at the top: the workers import only their own runtime (keras_cvt imports Keras).
    from keras_cvt import atomic

    path = args.results or RESULTS / f"runtimes_{args.model}_{args.size}.json"
    out = atomic.write_bytes(path, json.dumps(result, indent=2).encode())
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
