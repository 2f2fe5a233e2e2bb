"""Serving plumbing: find and run NVIDIA Triton Inference Server on a generated model repository.

``server.triton`` locates the tritonserver bundled in the ``nvidia-pytriton`` wheel, builds the
one tritonserver command line shared by local runs and the Modal container, and runs a server
process with readiness checks and clean shutdown. Importing this package has no side effects.
"""
