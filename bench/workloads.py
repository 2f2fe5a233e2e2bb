"""The benchmark's inputs: two real photos and the requests of every mode on them.

Photos from scikit-image: astronaut (512×512 PNG, a person) and coffee (400×600 JPEG, a cup).
Text mode alternates astronaut/"person" and coffee/"cup"; P3 asks four concepts of the astronaut.
Coordinates are pixels of the original image (x, y; boxes x0, y0, x1, y1). ``--photo-scale S``
enlarges both photos S× and sends them as JPEG, as a camera upload would be (clicks and box scaled).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from client.api import Sam3Client

TEXT_WORKLOADS = (("astronaut", ("person",)), ("coffee", ("cup",)))
P3_WORKLOAD = ("astronaut", ("person", "helmet", "flag", "spacesuit"))
BOX = (120.0, 20.0, 460.0, 500.0)  # around the astronaut, x0 y0 x1 y1 px


@dataclass(frozen=True)
class BenchImage:
    """A benchmark photo: name, encoded bytes (PNG or JPEG) and (height, width) px."""

    name: str
    data: bytes
    shape: tuple[int, int]
    format: str


def load_images(scale: float = 1.0) -> dict[str, BenchImage]:
    """astronaut (512×512 PNG, a person) and coffee (400×600 JPEG, a cup) from scikit-image;
    ``scale`` ≠ 1: both enlarged ``scale``× (bicubic) and encoded as JPEG."""
    from skimage import data  # noqa: PLC0415 (optional: test extra; needed only to run the benchmark)

    photos = {"astronaut": (data.astronaut(), "PNG"), "coffee": (data.coffee(), "JPEG")}
    if scale == 1.0:
        return {name: _encoded(name, pixels, fmt) for name, (pixels, fmt) in photos.items()}
    return {name: _encoded(name, _scaled(pixels, scale), "JPEG") for name, (pixels, _) in photos.items()}


def _scaled(pixels: np.ndarray, scale: float) -> np.ndarray:
    """RGB pixels [H, W, 3] uint8 resized to (round(H·scale), round(W·scale)), bicubic."""
    h, w = pixels.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def _encoded(name: str, pixels: np.ndarray, fmt: str) -> BenchImage:
    """RGB pixels [H, W, 3] uint8 encoded as ``fmt`` (PNG, or JPEG at quality 95)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return BenchImage(name, buf.getvalue(), tuple(pixels.shape[:2]), fmt)


def click_points(count: int, scale: float = 1.0) -> list[list[float]]:
    """``count`` distinct clicks on the astronaut (x, y px of the photo enlarged ``scale``×), spread over the person."""
    xs = np.linspace(200.0, 330.0, 5) * scale
    ys = np.linspace(120.0, 460.0, max(1, -(-count // 5))) * scale
    return [[float(x), float(y)] for y in ys for x in xs][:count]


def box_around_astronaut(scale: float = 1.0) -> list[float]:
    """``BOX`` in pixels of the astronaut enlarged ``scale``× (x0, y0, x1, y1)."""
    return [float(v * scale) for v in BOX]


def fresh_id(name: str) -> str:
    """An image_id the server has never seen: its embedding cache misses."""
    return f"{name}-{uuid.uuid4().hex}"


@dataclass
class Workloads:
    """The requests of every mode on the benchmark photos; ``thresholds``: text threshold per workload."""

    images: dict[str, BenchImage]
    thresholds: dict[str, float]
    points_per_side: int
    pred_iou_thresh: float
    stability_thresh: float
    clicks: list = field(default_factory=list)
    box: list = field(default_factory=box_around_astronaut)

    def call(self, client: Sam3Client, mode: str, i: int, image_id: str | None):
        """Request number ``i`` of ``mode`` (text alternates astronaut/person and coffee/cup)."""
        if mode == "text":
            name, concepts = TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)]
            return self.text(client, name, concepts, image_id)
        astronaut = self.images["astronaut"].data
        if mode == "point":
            return client.points(astronaut, [self.clicks[i % len(self.clicks)]], [1], image_id=image_id)
        if mode == "box":
            return client.boxes(astronaut, [self.box], image_id=image_id)
        return client.auto(
            self.images["coffee"].data,
            points_per_side=self.points_per_side,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_thresh,
            image_id=image_id,
        )

    def text(self, client: Sam3Client, name: str, concepts, image_id: str | None):
        """A text request: ``concepts`` on photo ``name`` at that workload's threshold."""
        key = workload_key(name, concepts)
        return client.text(self.images[name].data, list(concepts), threshold=self.thresholds[key], image_id=image_id)

    def image_of(self, mode: str, i: int) -> str:
        """Name of the photo request ``i`` of ``mode`` uses (for cache keys)."""
        if mode == "text":
            return TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)][0]
        return "coffee" if mode == "auto" else "astronaut"


def workload_key(name: str, concepts) -> str:
    """ "photo:concept+concept", the key of a text workload in ``Workloads.thresholds``."""
    return f"{name}:{'+'.join(concepts)}"


def calibrate_threshold(client: Sam3Client, image: BenchImage, concepts, keep: int) -> float:
    """A threshold that keeps about ``keep`` detections per concept: midway between the
    (keep·n)-th and the next best score of the server's answer at threshold 0."""
    seg = client.text(image.data, list(concepts), threshold=0.0, image_id=fresh_id(image.name))
    scores = np.sort(seg.scores)[::-1]
    n = keep * len(concepts)
    if len(scores) <= n:
        return 0.0
    return float((scores[n - 1] + scores[n]) / 2)


def thresholds_for(client: Sam3Client, images, args) -> dict[str, float]:
    """{workload key: threshold} for the text workloads and P3 (fixed, or calibrated with --threshold auto)."""
    workloads = list(TEXT_WORKLOADS) + [P3_WORKLOAD]
    if args.threshold != "auto":
        return {workload_key(n, c): float(args.threshold) for n, c in workloads}
    return {workload_key(n, c): calibrate_threshold(client, images[n], c, args.keep) for n, c in workloads}
