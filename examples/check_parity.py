"""Converts the original code's CvT-13 reference checkpoint and compares logits with it.

    python examples/check_parity.py [--reference ../shared/reference]

The reference (`cvt13_official_perturbed.pth` and its `_io.npz`) was produced by the original
microsoft/CvT PyTorch code; matching its logits shows this is the original model.
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

from keras_cvt import CvT13
from weights_conversion import convert

TOLERANCE = 1e-4


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
    parser.add_argument("--reference", type=pathlib.Path, default=default, help="folder of the reference files")
    args = parser.parse_args(argv)
    checkpoint = args.reference / "cvt13_official_perturbed.pth"
    io = np.load(args.reference / "cvt13_official_perturbed_io.npz")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "cvt13.weights.h5")
        convert(checkpoint, weights, model="cvt13")
        model = CvT13(weights=weights, include_preprocessing=False, classifier_activation=None)
        logits = model.predict(io["x"].transpose(0, 2, 3, 1), verbose=0)
    diff = float(np.abs(logits - io["logits"]).max())
    verdict = "OK" if diff <= TOLERANCE else "MISMATCH"
    print(f"CvT-13 vs the original PyTorch code: max |logits difference| = {diff:.2e} "
          f"(tolerance {TOLERANCE:g}, logits std {io['logits'].std():.2f}): {verdict}")
    return 0 if diff <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
