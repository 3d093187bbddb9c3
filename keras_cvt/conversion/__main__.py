"""`python -m keras_cvt.conversion INPUT OUTPUT.weights.h5 [--model cvt13|cvt21|cvtw24]`."""

import argparse
import sys

from keras_cvt.architectures import VARIANTS
from keras_cvt.atomic import WriteError
from keras_cvt.conversion import CheckpointMismatchError, convert
from keras_cvt.errors import describe_error


def main(argv=None, prog="python -m keras_cvt.conversion"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an original CvT checkpoint (Microsoft .pth, HuggingFace "
        "pytorch_model.bin, model.safetensors or tf_model.h5) into a Keras .weights.h5 file.",
    )
    parser.add_argument("input", help="checkpoint to read")
    parser.add_argument("output", help="Keras weights file to write (*.weights.h5)")
    parser.add_argument(
        "--model", choices=sorted(VARIANTS), help="variant to insist on (default: inferred from the tensors)"
    )
    args = parser.parse_args(argv)
    try:
        info = convert(args.input, args.output, model=args.model)
    # ImportError: a .pth/.bin without PyTorch installed; its message says what to install.
    except (CheckpointMismatchError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Writing failed after the checks (a full disk); the output was never put in place. A
    # WriteError already names the file and what stays.
    except WriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot write {args.output!r}: {describe_error(error)}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {info['tensors']} tensors, {info['variant'] or 'custom'} {info['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
