"""The pure helpers of the Modal app (``modal_triton.py``): no Modal import, no credentials, no GPU.

- ``builds``: where a build lives on the Volume, its completion marker, which build a server serves;
- ``images``: the pip steps of the container images;
- ``labels``: dataset labelling records and their COCO assembly;
- ``checks``: smoke requests, response checks, build reports, ``::verify`` options.

``modal_triton.py`` stays the app file (images, Volume, secrets, functions, entrypoints) and uses these;
tests/test_modal_app.py tests them without Modal.
"""
