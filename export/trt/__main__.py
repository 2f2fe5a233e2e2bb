"""``python -m export.trt --artifacts DIR [--out DIR]`` (same as ``python -m export trt``)."""

import sys

from export.trt.cli import main_trt

sys.exit(main_trt())
