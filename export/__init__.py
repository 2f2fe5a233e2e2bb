"""SAM3 export: checkpoint → ONNX graphs (+ TensorRT engines) from one spec (sam3_spec.py).

Run as ``python -m export onnx|verify|trt|all``. Importing this package has no side effects
and needs no torch; the modules that export import torch themselves.
"""
