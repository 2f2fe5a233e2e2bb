"""Python client of the `sam3` Triton model over gRPC or HTTP (KServe v2), via tritonclient.

    from client import Sam3Client
    with Sam3Client("127.0.0.1:8001") as sam:                   # gRPC; protocol="http" → port 8000
        seg = sam.text("photo.jpg", ["person", "dog"], threshold=0.4)
        seg.masks            # bool [D, H, W];  seg.boxes float32 [D, 4] x0, y0, x1, y1 px
        seg = sam.points(image_array, [[320, 240]], [1])          # one object → best of 3 masks
        seg = sam.boxes(pil_image, [[10, 20, 200, 300]])           # one object per box
        seg = sam.auto(image_bytes, points_per_side=16)            # everything

Input names and dtypes come from ``sam3_spec.SAM3_INPUTS`` (spec dtypes are Triton datatype
names; numpy dtypes from ``NP_DTYPES``). Every failure raises :class:`Sam3Error` with the server's
message and an HTTP-like ``status`` (400 bad request, 404 unknown model, 503 server unreachable,
504 timeout, 500 otherwise). One client may be shared by threads: each thread gets its own
tritonclient connection (tritonclient clients are not thread safe).
"""

from __future__ import annotations

import importlib
import math
import re
import threading
from collections import OrderedDict

import numpy as np
from tritonclient.utils import InferenceServerException

from client.images import encode_image_input
from client.results import OUTPUT_SPECS, Segmentation, segmentation_from_outputs
from sam3_spec import NP_DTYPES, ORCHESTRATOR, SAM3_INPUTS, UNCACHED_IMAGE_ID

MODEL_NAME = ORCHESTRATOR
PROTOCOLS = ("grpc", "http")
INPUT_SPECS = {t.name: t for t in SAM3_INPUTS}
# Every request carries every input (the spec's default where the caller gave None, which is every
# keyword's default in the methods below): Triton batches
# only requests with the same set of inputs, so this lets any two requests share one execute().
CANONICAL_INPUTS = {t.name: t.default for t in SAM3_INPUTS if t.default is not None}
URL_SCHEMES = {"http": {"http": False, "https": True}, "grpc": {"grpc": False, "grpcs": True}}
GRPC_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_NOISE = re.compile(r"^(\[(StatusCode\.)?\w+\]\s*|[A-Z_]+:\s*)+")


class Sam3Error(Exception):
    """A failed request. ``message``: what went wrong (the server's words); ``status``: HTTP-like
    code (400 bad request, 404 not found, 503 unavailable, 504 timeout, 500 other);
    ``protocol``: "grpc", "http" or "client" (rejected before sending)."""

    def __init__(self, message: str, status: int = 500, protocol: str = ""):
        super().__init__(message)
        self.message, self.status, self.protocol = message, int(status), protocol

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, protocol={self.protocol!r}, message={self.message!r})"


class UploadedIds:
    """The image_ids a client has sent with their image and the server answered (thread safe; the newest
    ``capacity`` kept): requests with such an id need not upload the image again."""

    def __init__(self, capacity: int = 4096):
        self.capacity, self._ids, self._lock = capacity, OrderedDict(), threading.Lock()

    def has(self, image_id) -> bool:
        with self._lock:
            return image_id in self._ids

    def add(self, image_id) -> None:
        with self._lock:
            self._ids[image_id] = None
            self._ids.move_to_end(image_id)
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)

    def forget(self, image_id) -> None:
        with self._lock:
            self._ids.pop(image_id, None)


class Sam3InputError(Sam3Error, ValueError):
    """A request field the client can reject before sending (unknown name, wrong shape); status 400."""

    def __init__(self, message: str):
        super().__init__(message, 400, "client")


def split_url(url: str, protocol: str) -> tuple[str, bool]:
    """'host:port' (an optional scheme stripped) and whether the scheme asks for TLS.

    http accepts http:// and https:// (→ TLS); grpc accepts grpc:// and grpcs:// (→ TLS).
    """
    if "://" not in url:
        return url.rstrip("/"), False
    scheme, address = url.split("://", 1)
    schemes = URL_SCHEMES[protocol]
    if scheme.lower() not in schemes:
        raise ValueError(
            f"URL scheme {scheme!r} does not fit protocol {protocol!r}: use host:port "
            f"or one of {', '.join(s + '://' for s in schemes)}"
        )
    return address.rstrip("/"), schemes[scheme.lower()]


def input_array(name: str, value) -> np.ndarray:
    """``value`` as the numpy array of SAM3 input ``name`` (dtype and shape rank from the spec)."""
    spec = INPUT_SPECS.get(name)
    if spec is None:
        raise Sam3InputError(f"unknown input {name!r}: the sam3 model takes {', '.join(INPUT_SPECS)}")
    if spec.dtype == "BYTES":
        return _shaped(name, spec.shape, _bytes_array(name, value))
    try:
        array = np.asarray(value, dtype=NP_DTYPES[spec.dtype])
    except (TypeError, ValueError) as err:
        raise Sam3InputError(f"{name} must be numbers ({spec.dtype}); got {value!r}") from err
    return _shaped(name, spec.shape, array)


def _bytes_array(name: str, value) -> np.ndarray:
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    if not all(isinstance(v, (str, bytes)) for v in items):
        raise Sam3InputError(f"{name} must be text (str or bytes, or a list of them); got {value!r}")
    return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in items] or [], dtype=object)


def _shaped(name: str, shape: tuple, array: np.ndarray) -> np.ndarray:
    """``array`` reshaped to ``shape`` (a str axis = any length; a flat list fills it row by row)."""
    target = tuple(-1 if isinstance(d, str) else d for d in shape)
    fixed = math.prod(d for d in target if d != -1)
    same_rank = array.ndim == len(target) and all(t in (-1, n) for t, n in zip(target, array.shape))
    flat = array.ndim < len(target) and (array.size % fixed == 0 if -1 in target else array.size == fixed)
    if not (same_rank or flat):
        raise Sam3InputError(f"{name} must have shape ({', '.join(map(str, shape))}); got {array.shape}")
    return array.reshape(target)


def status_of(err: InferenceServerException) -> int:
    """HTTP-like status of a tritonclient error: '400' over HTTP, 'StatusCode.INVALID_ARGUMENT' over gRPC."""
    status = str(err.status() or "")
    if status.isdigit():
        return int(status)
    return GRPC_STATUS.get(status.removeprefix("StatusCode."), 500)


def message_of(err: InferenceServerException) -> str:
    """The server's message without transport noise ('[StatusCode.X] ', 'INVALID_ARGUMENT:')."""
    return _NOISE.sub("", str(err.message() or err)).strip()


def concepts_of(mode: str, fields: dict) -> list[str]:
    """Label names of a request: its text concepts (text mode; "visual" for exemplar boxes only)."""
    if mode != "text":
        return []
    text = fields.get("text")
    items = [] if text is None else [text] if isinstance(text, (str, bytes)) else list(text)
    names = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in items]
    return names or (["visual"] if fields.get("boxes") is not None else [])


class Sam3Client:
    """Client of the `sam3` model; every method returns a :class:`Segmentation`.

    url: "host:port" (gRPC default port 8001, HTTP 8000); http:// or https:// (→ ssl) accepted
    for protocol "http". timeout_s: client-side limit per call in seconds. headers: sent with
    every call (e.g. an auth token for a proxy). ``image`` arguments accept a path, encoded
    bytes, a PIL.Image or a uint8 HxWx3 array (see client.images).
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: str = "grpc",
        timeout_s: float = 120.0,
        headers: dict | None = None,
        ssl: bool = False,
        reuse_uploads: bool = True,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        self.address, scheme_ssl = split_url(url, protocol)
        self.url, self.protocol, self.ssl = url, protocol, ssl or scheme_ssl
        self.timeout_s, self.headers = float(timeout_s), dict(headers or {})
        self._module = importlib.import_module(f"tritonclient.{protocol}")
        self._local, self._lock, self._opened = threading.local(), threading.Lock(), []
        self._uploaded = UploadedIds() if reuse_uploads else None

    # ---- high-level modes
    def text(
        self,
        image,
        concepts: str | list[str] | None = None,
        *,
        exemplar_boxes=None,
        exemplar_labels=None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        image_id: str | None = None,
        mask_format: str | None = None,
    ) -> Segmentation:
        """Every instance of each concept. exemplar_boxes: [K, 4] x0, y0, x1, y1 px with
        exemplar_labels [K] 1 (positive) / 0 (negative); boxes alone segment what they show.
        ``labels`` of the result index ``concepts``."""
        concepts = [concepts] if isinstance(concepts, str) else list(concepts or [])
        return self.segment(
            image,
            "text",
            text=concepts or None,
            boxes=exemplar_boxes,
            box_labels=exemplar_labels,
            threshold=threshold,
            mask_threshold=mask_threshold,
            image_id=image_id,
            mask_format=mask_format,
        )

    def points(
        self, image, points, labels=None, *, mask_threshold=None, image_id=None, mask_format=None
    ) -> Segmentation:
        """ONE object from clicks: points [N, 2] x, y px, labels [N] 1 fg / 0 bg (default all 1).
        One detection: the best of 3 candidate masks; ``iou_scores`` [1, 3] holds all three."""
        return self.segment(
            image,
            "point",
            points=points,
            point_labels=labels,
            mask_threshold=mask_threshold,
            image_id=image_id,
            mask_format=mask_format,
        )

    def boxes(
        self, image, boxes, *, points=None, point_labels=None, mask_threshold=None, image_id=None, mask_format=None
    ) -> Segmentation:
        """One object per box: boxes [K, 4] x0, y0, x1, y1 px; optional points [N, 2] + labels join every box."""
        return self.segment(
            image,
            "box",
            boxes=boxes,
            points=points,
            point_labels=point_labels,
            mask_threshold=mask_threshold,
            image_id=image_id,
            mask_format=mask_format,
        )

    def auto(
        self,
        image,
        *,
        points_per_side=None,
        points_per_batch=None,
        pred_iou_thresh=None,
        stability_score_thresh=None,
        mask_threshold=None,
        image_id=None,
        mask_format=None,
    ) -> Segmentation:
        """Everything: a points_per_side² grid of clicks, filtered by predicted IoU and stability, then NMS."""
        return self.segment(
            image,
            "auto",
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            mask_threshold=mask_threshold,
            image_id=image_id,
            mask_format=mask_format,
        )

    # ---- low level
    def segment(self, image, mode: str, **fields) -> Segmentation:
        """One request with any SAM3_INPUTS fields by name (None = leave out); the server validates mode.

        ``image`` may be None when ``image_id`` names an image the server has cached (no upload). With
        ``reuse_uploads`` (default), an image already sent with the same ``image_id`` by this client is not
        read, encoded or sent again: the server keys its cache by the id and ignores the bytes of a cached id
        anyway. If the server no longer has it (evicted, restarted), the request is sent again with the image,
        once.
        """
        image_id = fields.get("image_id")
        if image is None and not image_id:
            raise Sam3InputError("image is required (or pass image_id of an image the server has cached)")
        reuse = self._uploaded if isinstance(image_id, str) and image_id else None
        if image is not None and reuse is not None and reuse.has(image_id):
            try:
                return self._segment(b"", mode, fields)  # nor is the image read or encoded
            except Sam3Error as err:
                if err.status != 400 or UNCACHED_IMAGE_ID not in err.message:
                    raise
                reuse.forget(image_id)
        data = b"" if image is None else encode_image_input(image)
        result = self._segment(data, mode, fields)
        if data and reuse is not None:
            reuse.add(image_id)
        return result

    def _segment(self, data: bytes, mode: str, fields: dict) -> Segmentation:
        """One infer call: ``data`` the encoded image (b"": none sent), ``fields`` the other inputs."""
        given = {"image": data, "mode": mode, **fields}
        values = CANONICAL_INPUTS | {name: value for name, value in given.items() if value is not None}
        inputs = [self._input(name, value) for name, value in values.items()]
        result = self._call("infer", MODEL_NAME, inputs, **self._timeout_kw())
        outputs = {name: result.as_numpy(name)[0] for name in OUTPUT_SPECS}  # drop Triton's batch axis of 1
        return segmentation_from_outputs(outputs, concepts_of(mode, fields), mode)

    def is_ready(self) -> bool:
        """True when the server answers and the `sam3` model is ready; False when unreachable."""
        try:
            return bool(
                self._call("is_server_ready", **self._timeout_kw())
                and self._call("is_model_ready", MODEL_NAME, **self._timeout_kw())
            )
        except Sam3Error as err:
            if err.status in (503, 504):
                return False
            raise

    def close(self) -> None:
        """Close every connection this client opened (a later call opens new ones)."""
        with self._lock:
            opened, self._opened, self._local = self._opened, [], threading.local()
        for transport in opened:
            transport.close()

    def __enter__(self) -> "Sam3Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sam3Client(url={self.url!r}, protocol={self.protocol!r}, timeout_s={self.timeout_s})"

    # ---- transport
    def _input(self, name: str, value):
        array = input_array(name, value)[None]  # Triton's batch axis: one request = batch of 1
        tensor = self._module.InferInput(name, list(array.shape), INPUT_SPECS[name].dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _timeout_kw(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _transport(self):
        """This thread's tritonclient client (created on first use)."""
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._new_transport()
            self._local.transport = transport
            with self._lock:
                self._opened.append(transport)
        return transport

    def _new_transport(self):
        cls = self._module.InferenceServerClient
        if self.protocol == "grpc":
            return cls(self.address, ssl=self.ssl)
        return cls(self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s, ssl=self.ssl)

    def _call(self, method: str, *args, **kwargs):
        """transport.method(*args, headers=..., **kwargs) with every failure turned into Sam3Error."""
        try:
            return getattr(self._transport(), method)(*args, headers=self.headers or None, **kwargs)
        except InferenceServerException as err:
            raise self._server_error(err) from err
        except TimeoutError as err:
            raise Sam3Error(
                f"no answer from the SAM3 server at {self.url} within {self.timeout_s:g} s "
                "(raise timeout_s for large images or a cold server)",
                504,
                self.protocol,
            ) from err
        except OSError as err:
            raise self._unreachable(str(err)) from err

    def _server_error(self, err: InferenceServerException) -> Sam3Error:
        status, message = status_of(err), message_of(err)
        if status == 503 and self.protocol == "grpc":
            return self._unreachable(message)
        if status == 504:
            message = f"no answer from the SAM3 server at {self.url} within {self.timeout_s:g} s ({message})"
        return Sam3Error(message, status, self.protocol)

    def _unreachable(self, detail: str) -> Sam3Error:
        return Sam3Error(
            f"cannot reach the SAM3 server at {self.url} over {self.protocol} ({detail}): "
            "is it running (sam3-triton serve), and are the host, port and protocol right "
            "(gRPC 8001, HTTP 8000 by default)?",
            503,
            self.protocol,
        )
