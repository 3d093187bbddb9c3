"""Converts the original code's CvT-13 reference checkpoint and compares logits with it.

    python examples/check_parity.py --reference DIR     # or KERAS_CVT_REFERENCE=DIR

DIR holds `cvt13_official_perturbed.pth`, a CvT-13 checkpoint written by the original
microsoft/CvT PyTorch code (its weights moved off their initial values, as trained weights
are), and `cvt13_official_perturbed_io.npz`: inputs `x` (NCHW, normalised) and the logits that
code computed for them. Matching those logits shows this is the original model. The reference
(80 MB) is not part of the repository; `examples/quickstart.py` makes the same check with the
tiny original-code checkpoint that is.
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4
CHECKPOINT = "cvt13_official_perturbed.pth"
INPUTS_AND_LOGITS = "cvt13_official_perturbed_io.npz"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference",
        type=pathlib.Path,
        default=os.environ.get("KERAS_CVT_REFERENCE"),
        help=f"folder of {CHECKPOINT} and {INPUTS_AND_LOGITS} (default: $KERAS_CVT_REFERENCE)",
    )
    args = parser.parse_args(argv)
    if args.reference is None:
        missing = "no CvT-13 reference given: pass --reference DIR or set KERAS_CVT_REFERENCE"
    else:
        absent = [name for name in (CHECKPOINT, INPUTS_AND_LOGITS) if not (args.reference / name).is_file()]
        missing = absent and f"the CvT-13 reference folder {args.reference} has no {' and no '.join(absent)}"
    if missing:
        print(f"{parser.prog}: error: {missing}", file=sys.stderr)
        return 2

    from keras_cvt import CvT13
    from keras_cvt.conversion import convert

    io = np.load(args.reference / INPUTS_AND_LOGITS)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "cvt13.weights.h5")
        convert(args.reference / CHECKPOINT, weights, model="cvt13")
        model = CvT13(weights=weights, include_preprocessing=False, classifier_activation=None)
        logits = model.predict(io["x"].transpose(0, 2, 3, 1), verbose=0)
    diff = float(np.abs(logits - io["logits"]).max())
    verdict = "OK" if diff <= TOLERANCE else "MISMATCH"
    print(f"CvT-13 vs the original PyTorch code: max |logits difference| = {diff:.2e} "
          f"(tolerance {TOLERANCE:g}, logits std {io['logits'].std():.2f}): {verdict}")
    return 0 if diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
