"""The benchmark's inputs: two real photos and the requests of every mode on them.

Photos from scikit-image: astronaut (512×512 PNG, a person) and coffee (400×600 JPEG, a cup).
Text mode alternates astronaut/"person" and coffee/"cup"; P3 asks four concepts of the astronaut.
Coordinates are pixels of the original image (x, y; boxes x0, y0, x1, y1).
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


def load_images() -> dict[str, BenchImage]:
    """astronaut (512×512 PNG, a person) and coffee (400×600 JPEG, a cup) from scikit-image."""
    from skimage import data  # noqa: PLC0415 (optional: test extra; needed only to run the benchmark)

    return {
        "astronaut": _encoded("astronaut", data.astronaut(), "PNG"),
        "coffee": _encoded("coffee", data.coffee(), "JPEG"),
    }


def _encoded(name: str, pixels: np.ndarray, fmt: str) -> BenchImage:
    """RGB pixels [H, W, 3] uint8 encoded as ``fmt`` (PNG, or JPEG at quality 95)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return BenchImage(name, buf.getvalue(), tuple(pixels.shape[:2]), fmt)


def click_points(count: int) -> list[list[float]]:
    """``count`` distinct clicks on the astronaut (x, y px), spread over the person."""
    xs = np.linspace(200.0, 330.0, 5)
    ys = np.linspace(120.0, 460.0, max(1, -(-count // 5)))
    return [[float(x), float(y)] for y in ys for x in xs][:count]


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

    def call(self, client: Sam3Client, mode: str, i: int, image_id: str | None):
        """Request number ``i`` of ``mode`` (text alternates astronaut/person and coffee/cup)."""
        if mode == "text":
            name, concepts = TEXT_WORKLOADS[i % len(TEXT_WORKLOADS)]
            return self.text(client, name, concepts, image_id)
        astronaut = self.images["astronaut"].data
        if mode == "point":
            return client.points(astronaut, [self.clicks[i % len(self.clicks)]], [1], image_id=image_id)
        if mode == "box":
            return client.boxes(astronaut, [list(BOX)], image_id=image_id)
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
