"""Peak memory, time and outputs of CvT-13's exported files at a large fixed size, attention
in blocks (what the exports write) against every score matrix whole (`whole_scores()`).

    python benchmarks/export_memory.py [--size 768] [--formats onnx openvino tflite]

Each file is written at `--size` (batch free) in this process, then run on one image in a
process of its own (ONNX Runtime, OpenVINO's CPU plugin in float32, LiteRT with XNNPack): memory
is the peak resident set above the process after the file was loaded and compiled (reset
through /proc/self/clear_refs), time that of the first call. Writes
benchmarks/results/export_memory_cvt13.json (`_any_size` with `--any-size`).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.memory import GB, _reset_peak, _rss_bytes, cpu_features  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "export_memory_cvt13{}.json"
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}


def _load(format, path):
    """`path` as a function of pixels, and the operation types of its graph."""
    if format == "onnx":
        import onnx
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return (lambda x: session.run(None, {"pixels": x})[0]), {n.op_type for n in onnx.load(path).graph.node}
    if format == "openvino":
        import openvino

        model = openvino.Core().read_model(path)
        compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return (lambda x: compiled(x)["probabilities"]), {op.get_type_name() for op in model.get_ordered_ops()}
    from ai_edge_litert import interpreter as litert

    interpreter = litert.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    return (lambda x: runner(pixels=x)["probabilities"]), {op["op_name"] for op in interpreter._get_ops_details()}


def worker(format, path, size, out):
    import numpy as np

    run, ops = _load(format, path)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    baseline = _rss_bytes("self", "VmRSS")
    _reset_peak()
    start = time.perf_counter()
    probabilities = run(x)
    seconds = time.perf_counter() - start
    np.save(out, probabilities)
    print(json.dumps({"peak_bytes": _rss_bytes("self", "VmHWM") - baseline, "time_s": seconds, "ops": sorted(ops)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--weights", help="a CvT-13 .weights.h5 (default: random weights)")
    parser.add_argument("--formats", nargs="+", default=list(SUFFIXES), choices=list(SUFFIXES))
    parser.add_argument("--any-size", action="store_true", help="files of any height and width, run at --size")
    parser.add_argument("--worker", nargs=4, metavar=("FORMAT", "PATH", "SIZE", "OUT"))
    args = parser.parse_args()
    if args.worker:
        format, path, size, out = args.worker
        return worker(format, path, int(size), out)
    import numpy as np

    from keras_cvt import CvT13, attention
    from keras_cvt.export import export

    model = CvT13(weights=args.weights, input_shape=(None, None, 3), classifier_activation=None)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_features(), "size": args.size,
               "any_size": args.any_size,
               "weights": args.weights and pathlib.Path(args.weights).name, "files": {}}
    with tempfile.TemporaryDirectory() as directory:
        for format in args.formats:
            outputs = {}
            for form in ("blocks", "whole"):
                path = str(pathlib.Path(directory) / f"{form}{SUFFIXES[format]}")
                if form == "whole":
                    with attention.whole_scores():
                        export(model, path, format=format, input_size=None if args.any_size else args.size)
                else:
                    export(model, path, format=format, input_size=None if args.any_size else args.size)
                out = str(pathlib.Path(directory) / f"{format}-{form}.npy")
                env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
                child = subprocess.run([sys.executable, __file__, "--worker", format, path, str(args.size), out],
                                       capture_output=True, text=True, env=env)
                if child.returncode:
                    raise RuntimeError(f"{format} {form}: {child.stderr[-2000:]}")
                results["files"][f"{format}/{form}"] = json.loads(child.stdout.strip().splitlines()[-1])
                outputs[form] = np.load(out).astype(np.float64)
                entry = results["files"][f"{format}/{form}"]
                print(f"{format}/{form}: +{entry['peak_bytes'] / GB:.2f} GB, {entry['time_s']:.1f} s", flush=True)
            difference = np.abs(outputs["blocks"] - outputs["whole"]).max() / np.abs(outputs["whole"]).max()
            results["files"][f"{format}/blocks"]["relative_difference_to_whole"] = float(difference)
            print(f"{format}: blocks within {difference:.1e} (relative) of whole", flush=True)
            results_path = RESULTS.with_name(RESULTS.name.format("_any_size" if args.any_size else ""))
            results_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
