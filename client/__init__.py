"""Clients of the SAM3 Triton service: the Python library, the `sam3-client` CLI and the benchmark.

    from client import Sam3Client
    seg = Sam3Client("127.0.0.1:8001").text("photo.jpg", "person")

Modules: api (Sam3Client, Sam3Error), results (Segmentation), images (image inputs),
overlay (draw_overlay), cli (sam3-client). No torch needed; importing has no side effects.
"""

from client.api import Sam3Client, Sam3Error, Sam3InputError
from client.images import encode_image_input
from client.results import Segmentation

__all__ = ["Sam3Client", "Sam3Error", "Sam3InputError", "Segmentation", "encode_image_input"]
