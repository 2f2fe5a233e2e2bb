"""``sam3-triton gpu-check``: one command that proves engines, parity and latency on an NVIDIA GPU.

plan       stages × batch sizes from the spec, the targets (pure)
preflight  what this machine has (fast probe) and the decisions taken from it (pure)
measure    engines through export.trt's parity gate, fresh parity, stage timing (GPU)
e2e        text / point requests through tritonserver on the GPU repository (GPU)
report     verdict, printed table, JSON file (pure)
run        the whole sequence (also behind Modal's ``::verify``)
cli        the command line
"""
