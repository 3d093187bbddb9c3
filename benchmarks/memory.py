"""Peak memory and time of the CvT-13 backbone against the image size: ours (TensorFlow) and
HuggingFace's `CvtModel` (PyTorch), one image and a batch of 8.

    python benchmarks/memory.py [--sizes 224 384 ...] [--batches 1 8] [--cap-gb 7.5]
                                [--time-cap 300] [--ab-rounds 15] [--resume] [--plot-only] [--table]

Systems, each case (system, size, batch) in a process of its own:

- `ours`: `CvT13(include_top=False, input_shape=(None, None, 3))`, `predict_on_batch` (a graph
  traced for the size), attention as `keras_cvt.attention` chooses it;
- `ours_whole`: the same, every score matrix computed whole (`PLAIN_LIMIT_BYTES` unbounded):
  keras_cvt before the blocked attention, the same operations;
- `hf`: transformers' `CvtModel(CvtConfig())` (CvT-13's configuration, random weights: the
  memory and time do not depend on them), `torch.no_grad()`;
- `ours_train`: one fine-tuning step (`train_on_batch`, forward and backward, SGD) of the
  CvT-13 classifier at `--train-size` (512) and batch 8; `ours_whole_train` the same whole.

Memory is the peak resident set (VmHWM, reset through /proc/self/clear_refs after the model is
built and the input made) above the resident set at that point; it includes the tracing of the
first call. Time is the best of the later calls (at least one, at most three, more only
while under 8 s); where the first call took over `LONG_CALL_S`, that call's time (with its
tracing, a few seconds) and no more. A case
whose predicted peak (the largest score matrix, twice: scores and softmax) exceeds `--cap-gb`
is recorded as not fitting without being run; a running case is killed once its resident set
passes the cap, or its time `--time-cap` (recorded as such), so the machine never swaps.

`--batch8-max`: the largest size measured at batch 8 (larger ones are recorded as not run: on
two shared cores a batch of 8 at 1536 and 2048 takes many minutes).

`--ab-rounds`: the comparison of ours against `ours_whole` at `--ab-sizes` (224 and 512: at
1024 the whole matrices need more than the cap), one image, in one process, their calls
interleaved (A B A B ...): the ratio of medians and the median of the paired ratios.

Writes benchmarks/results/memory_cvt13.json and docs/images/memory_cvt13.png.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "memory_cvt13.json"
PLOT = ROOT / "docs" / "images" / "memory_cvt13.png"
SIZES = (224, 384, 512, 768, 1024, 1536, 2048)
SYSTEMS = ("ours", "ours_whole", "hf")
# CvT-13: (heads, embedding stride of the stage's tokens); keys and values at stride 2 more.
STAGES = ((1, 4), (3, 16), (6, 64))
GB = 2**30
# A first call longer than this is the time measured (tracing included): no more calls.
LONG_CALL_S = 120


def cpu_features():
    """The CPU's model, core count and vector extensions (what the kernels can use)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"model": model, "cpus": os.cpu_count(), "features": [f for f in wanted if f in flags]}


def whole_scores_bytes(size, batch):
    """The largest score matrix of CvT-13 at `size` pixels, whole (float32, all heads)."""
    largest = 0
    for heads, stride in STAGES:
        side = -(-size // stride)
        queries, keys = side * side + 1, (-(-side // 2)) ** 2 + 1
        largest = max(largest, heads * queries * keys * 4)
    return batch * largest


def predicted_bytes(system, size, batch):
    """A lower bound of the peak: the scores and their softmax where computed whole."""
    if system == "ours":
        return 0
    return 2 * whole_scores_bytes(size, batch)


def _rss_bytes(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --- the worker: one case in this process -------------------------------------------------


def _ours(system, train):
    import keras
    import numpy as np

    from keras_cvt import CvT13, attention

    if system.startswith("ours_whole"):
        attention.PLAIN_LIMIT_BYTES = 2**62
    if not train:
        return CvT13(include_top=False, input_shape=(None, None, 3), weights=None).predict_on_batch
    model = CvT13(input_shape=(None, None, 3), weights=None, include_preprocessing=False)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    return lambda x: model.train_on_batch(x, np.zeros(len(x), "int32"))


def _hf():
    import torch
    from transformers import CvtConfig, CvtModel

    model = CvtModel(CvtConfig()).eval()

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()

    return run


def worker(system, size, batch, repeat_seconds=8.0):
    import numpy as np

    train = system.endswith("_train")
    run = _hf() if system == "hf" else _ours(system, train)
    x = np.random.default_rng(0).uniform(0, 255 if not train else 1, (batch, size, size, 3)).astype("float32")
    baseline = _rss_bytes("self", "VmRSS")
    _reset_peak()
    times = []
    start = time.perf_counter()
    run(x)
    first = time.perf_counter() - start
    peak = _rss_bytes("self", "VmHWM") - baseline
    if first > LONG_CALL_S:
        # Tracing is a few seconds of it; another call would double a run of many minutes.
        print(json.dumps({"peak_bytes": peak, "first_s": first, "time_s": first, "calls": 0}))
        return
    budget = time.perf_counter() + repeat_seconds
    while not times or (time.perf_counter() < budget and len(times) < 3):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    print(json.dumps({"peak_bytes": peak, "first_s": first, "time_s": min(times), "calls": len(times)}))


def ab_worker(size, batch, rounds):
    """Ours against ours_whole, calls interleaved in one process: {system: [seconds]}."""
    import numpy as np

    from keras_cvt import CvT13, attention

    new = CvT13(include_top=False, input_shape=(None, None, 3), weights=None)
    old = CvT13(include_top=False, input_shape=(None, None, 3), weights=None)
    old.set_weights(new.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    # Each traced once, under its own limit: the graph keeps the path chosen when it was made.
    limit = attention.PLAIN_LIMIT_BYTES
    new.predict_on_batch(x)
    attention.PLAIN_LIMIT_BYTES = 2**62
    old.predict_on_batch(x)
    attention.PLAIN_LIMIT_BYTES = limit
    difference = float(np.abs(new.predict_on_batch(x) - old.predict_on_batch(x)).max())
    times = {"ours": [], "ours_whole": []}
    for _ in range(rounds):
        for name, model in (("ours", new), ("ours_whole", old)):
            start = time.perf_counter()
            model.predict_on_batch(x)
            times[name].append(time.perf_counter() - start)
    print(json.dumps({"times": times, "max_abs_difference": difference}))


# --- the driver ------------------------------------------------------------------------


def _spawn(arguments, cap_bytes, time_cap):
    """Runs this script with `arguments` in a child; kills it past `cap_bytes` of resident set
    or `time_cap` seconds. Returns (result dict or None, why not)."""
    # Passive OpenMP waits: on a shared machine PyTorch's spinning threads otherwise lose most
    # of their time to each other (HF's 224-pixel call took 9-12 s instead of a fraction of one).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    child = subprocess.Popen([sys.executable, __file__, *arguments], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    start, peak_total, reason = time.monotonic(), 0, None
    while child.poll() is None:
        try:
            rss = _rss_bytes(child.pid, "VmRSS")
        except (OSError, RuntimeError):
            rss = 0
        peak_total = max(peak_total, rss)
        if rss > cap_bytes:
            reason = f"killed: resident set passed the cap of {cap_bytes / GB:.1f} GB"
        elif time.monotonic() - start > time_cap:
            reason = f"killed: over the time cap of {time_cap} s"
        if reason:
            child.kill()
            child.wait()
            return None, f"{reason} (largest resident set seen: {peak_total / GB:.2f} GB, with the model)"
        time.sleep(0.02)
    out, err = child.communicate()
    if child.returncode:
        return None, f"failed (exit {child.returncode}): {err.strip().splitlines()[-1:]}"
    return json.loads(out.strip().splitlines()[-1]), None


def predicted_over_cap(system, size, batch, cap_bytes):
    """The entry of a case whose whole score matrices alone exceed the cap, or None."""
    predicted = predicted_bytes(system.replace("_train", ""), size, batch)
    if predicted <= cap_bytes:
        return None
    return {"fits": False, "why": f"predicted peak over {predicted / GB:.1f} GB "
            f"(whole score matrices), over the cap of {cap_bytes / GB:.1f} GB"}


def measure(cases, cap_bytes, time_cap, results):
    for system, size, batch in cases:
        key = f"{system}/{size}/{batch}"
        predicted = predicted_over_cap(system, size, batch, cap_bytes)
        if predicted:
            results["cases"][key] = predicted
        else:
            result, why = _spawn(["--worker", system, str(size), str(batch)], cap_bytes, time_cap)
            # A case killed for time says nothing of whether it fits.
            fits = True if result else (False if why.startswith("killed: resident") else None)
            results["cases"][key] = {"fits": fits, **result} if result else {"fits": fits, "why": why}
        entry = results["cases"][key]
        shown = (f"+{entry['peak_bytes'] / GB:.2f} GB, {entry['time_s']:.2f} s" if entry.get("peak_bytes")
                 is not None else entry["why"])
        print(f"{key}: {shown}", flush=True)
        write(results)


def ab(size, batch, rounds, cap_bytes, time_cap, results):
    if predicted_bytes("ours_whole", size, batch) * 1.2 > cap_bytes:
        results["ab"][f"{size}/{batch}"] = {"why": "the whole matrices do not fit the cap"}
        return
    result, why = _spawn(["--ab", str(size), str(batch), str(rounds)], cap_bytes, time_cap)
    if result is None:
        results["ab"][f"{size}/{batch}"] = {"why": why}
    else:
        medians = {name: statistics.median(t) for name, t in result["times"].items()}
        ratios = [a / b for a, b in zip(result["times"]["ours"], result["times"]["ours_whole"])]
        results["ab"][f"{size}/{batch}"] = {
            "median_s": medians,
            "ratio_of_medians": medians["ours"] / medians["ours_whole"],
            "median_of_paired_ratios": statistics.median(ratios),
            "rounds": rounds,
            "max_abs_difference": result["max_abs_difference"],
        }
    print(f"A/B {size}/{batch}: {results['ab'][f'{size}/{batch}']}", flush=True)
    write(results)


def write(results):
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axes, time_axes) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"ours": ("tab:blue", "keras_cvt (TensorFlow)"), "ours_whole": ("tab:gray", "keras_cvt before (whole scores)"),
              "hf": ("tab:orange", "HuggingFace CvtModel (PyTorch)")}
    for system, (color, label) in styles.items():
        for batch, marker, line in ((1, "o", "-"), (8, "s", "--")):
            points = [(size, results["cases"].get(f"{system}/{size}/{batch}")) for size in results["sizes"]]
            ran = [(size * size, entry) for size, entry in points if entry and entry.get("peak_bytes") is not None]
            if not ran:
                continue
            pixels = [p for p, _ in ran]
            name = f"{label}, batch {batch}"
            memory_axes.plot(pixels, [e["peak_bytes"] / GB for _, e in ran], line, marker=marker, color=color, label=name)
            time_axes.plot(pixels, [e["time_s"] for _, e in ran], line, marker=marker, color=color, label=name)
            missing = [size * size for size, entry in points if entry and entry.get("fits") is False]
            if missing:
                memory_axes.scatter(missing, [results["cap_bytes"] / GB] * len(missing), marker="x", color=color)
    memory_axes.axhline(results["cap_bytes"] / GB, color="red", linewidth=0.8, linestyle=":")
    memory_axes.text(224 * 224, results["cap_bytes"] / GB * 1.08, "cap (x: does not fit)", color="red", fontsize=8)
    for axes, title in ((memory_axes, "peak memory above the process (GB)"), (time_axes, "time (s)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks([s * s for s in results["sizes"]], [f"{s}²" for s in results["sizes"]], fontsize=7)
        axes.minorticks_off()
        axes.set_xlabel("pixels")
        axes.set_title(title)
        axes.grid(alpha=0.3)
    memory_axes.legend(fontsize=7)
    cpu = results["cpu"]
    figure.suptitle(f"CvT-13 backbone, {cpu['cpus']} CPUs ({cpu['model']})", fontsize=9)
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)
    print(f"plot: {PLOT}")


def table(results):
    """The results as a Markdown table (docs/memory.md)."""
    names = {"ours": "keras_cvt", "ours_whole": "before (whole scores)", "hf": "HF CvtModel"}
    batches = sorted({int(key.split("/")[2]) for key in results["cases"]})
    header = ["size"] + [f"{names[s]}, batch {b}" for b in batches for s in SYSTEMS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for size in results["sizes"]:
        cells = [str(size)]
        for batch in batches:
            for system in SYSTEMS:
                entry = results["cases"].get(f"{system}/{size}/{batch}")
                if entry is None:
                    cells.append("")
                elif entry.get("peak_bytes") is not None:
                    cells.append(f"+{entry['peak_bytes'] / GB:.2f} GB, {entry['time_s']:.1f} s")
                else:
                    cells.append("does not fit" if entry["fits"] is False else
                                 "over the time cap" if entry["why"].startswith("killed: over the time")
                                 else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--systems", nargs="*", default=list(SYSTEMS))
    parser.add_argument("--cap-gb", type=float, default=7.5)
    parser.add_argument("--time-cap", type=int, default=300)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--ab-rounds", type=int, default=15)
    parser.add_argument("--ab-sizes", type=int, nargs="*", default=[224, 512])
    parser.add_argument("--batch8-max", type=int, default=1024)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the results file as Markdown")
    parser.add_argument("--resume", action="store_true", help="keep the cases and A/B of the results file")
    parser.add_argument("--worker", nargs=3, metavar=("SYSTEM", "SIZE", "BATCH"))
    parser.add_argument("--ab", nargs=3, type=int, metavar=("SIZE", "BATCH", "ROUNDS"))
    args = parser.parse_args()
    if args.worker:
        system, size, batch = args.worker
        return worker(system, int(size), int(batch))
    if args.ab:
        return ab_worker(*args.ab)
    if args.table:
        return print(table(json.loads(RESULTS.read_text())))
    if args.plot_only:
        return plot(json.loads(RESULTS.read_text()))
    cap = int(args.cap_gb * GB)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_features(), "cap_bytes": cap,
               "time_cap_s": args.time_cap, "sizes": args.sizes, "cases": {}, "ab": {}}
    if args.resume and RESULTS.exists():
        previous = json.loads(RESULTS.read_text())
        results.update(date=f"{previous['date']} to {results['date']}", ab=previous["ab"], cases=previous["cases"],
                       sizes=sorted(set(previous["sizes"]) | set(args.sizes)))
    print(json.dumps(results["cpu"]), flush=True)
    for size in args.ab_sizes:
        if f"{size}/1" not in results["ab"]:
            ab(size, 1, args.ab_rounds, cap, args.time_cap, results)
    # Largest last, one at a time.
    cases = [(system, size, batch) for size in sorted(args.sizes) for batch in sorted(args.batches)
             for system in args.systems if batch == 1 or size <= args.batch8_max]
    for size in args.sizes:
        if size > args.batch8_max and 8 in args.batches:
            for system in args.systems:
                results["cases"][f"{system}/{size}/8"] = (predicted_over_cap(system, size, 8, cap)
                                                          or {"fits": None, "why": "not run: over this run's time"})
    cases += [(f"{system}_train", args.train_size, 8) for system in ("ours", "ours_whole")]
    cases.sort(key=lambda case: (case[1] * case[1] * case[2], case[0]))
    cases = [case for case in cases if "/".join(map(str, case)) not in results["cases"]]
    measure(cases, cap, args.time_cap, results)
    plot(results)


if __name__ == "__main__":
    main()
