"""`python -m weights_conversion`: the old name of `python -m keras_cvt.conversion`."""

import sys

from keras_cvt.conversion.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m weights_conversion"))
