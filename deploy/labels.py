"""Dataset labelling: one record per image from a text-prompt Segmentation, resumable shards, and
the COCO instances file assembled from the records.

Boxes are ``[x1, y1, x2, y2]`` pixels of the original image in records and ``[x, y, w, h]`` in COCO;
masks are COCO RLE (column-major counts string) of the original image size.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pycocotools import mask as mask_utils

from export.trt import sanitize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def clean_concepts(concepts: list[str]) -> list[str]:
    """Concepts stripped of surrounding spaces; ValueError when one is empty or not text."""
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise ValueError(f"concepts must be non-empty strings, got {concepts!r}")
    return [c.strip() for c in concepts]


def record_from_segmentation(file_name: str, seg) -> dict:
    """One image's labels from a client Segmentation: {"file_name", "height", "width", "concepts",
    "detections": [{"category": concept index, "score", "box": [x1,y1,x2,y2] px, "rle": COCO counts str}]}."""
    height, width = seg.image_shape
    dets = [
        {"category": int(c), "score": float(s), "box": [float(x) for x in b], "rle": r.decode()}
        for r, b, s, c in zip(seg.masks_rle, seg.boxes, seg.scores, seg.labels)
    ]
    return {
        "file_name": file_name,
        "height": int(height),
        "width": int(width),
        "concepts": list(seg.concepts),
        "detections": dets,
    }


def parse_concepts(text: str) -> list[str]:
    """ "person, red car" → ["person", "red car"]; ValueError when empty."""
    concepts = [c.strip() for c in text.split(",") if c.strip()]
    if not concepts:
        raise ValueError("give at least one concept, e.g. --text 'person,car'")
    return concepts


def list_images(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix name, path) of every image under ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a directory of images")
    files = (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(((p.relative_to(folder).as_posix(), p) for p in files), key=lambda item: item[0])


def shard_path(shards: Path, file_name: str) -> Path:
    """Per-image result file: sanitized name + a short hash (distinct for a/b.jpg and a-b.jpg)."""
    digest = hashlib.sha1(file_name.encode()).hexdigest()[:10]
    return Path(shards) / f"{sanitize(file_name)}-{digest}.json"


def pending_images(images: list[tuple[str, Path]], shards: Path, concepts: list[str]) -> list[tuple[str, Path]]:
    """The images without a finished shard for these concepts (resuming skips the rest)."""

    def done(name: str) -> bool:
        path = shard_path(shards, name)
        return path.is_file() and json.loads(path.read_text()).get("concepts") == concepts

    return [item for item in images if not done(item[0])]


def coco_annotation(ann_id: int, image_id: int, record: dict, det: dict, n_categories: int) -> dict:
    """One COCO annotation (results format + iscrowd) from a detection of ``record``."""
    if not 0 <= det["category"] < n_categories:
        raise ValueError(f"{record['file_name']}: concept index {det['category']} outside 0..{n_categories - 1}")
    rle = {"size": [record["height"], record["width"]], "counts": det["rle"]}
    x1, y1, x2, y2 = det["box"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": det["category"] + 1,
        "segmentation": rle,
        "area": float(mask_utils.area({**rle, "counts": det["rle"].encode()})),
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": det["score"],
        "iscrowd": 0,
    }


def coco_dataset(
    records: list[dict], concepts: list[str], model: str, description: str = "SAM 3 text-prompt labels"
) -> dict:
    """COCO instances dict (images, annotations with RLE masks / xywh boxes / scores, categories).

    records: label records (record_from_segmentation) made with these ``concepts`` by ``model``;
    image ids follow file_name order, category id = concept index + 1.
    """
    mismatched = [r["file_name"] for r in records if r.get("concepts", concepts) != concepts]
    if mismatched:
        raise ValueError(f"records labeled with other concepts than {concepts}: {mismatched[:5]}")
    images, annotations = [], []
    for image_id, rec in enumerate(sorted(records, key=lambda r: r["file_name"]), 1):
        images.append({"id": image_id, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]})
        for det in rec["detections"]:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, rec, det, len(concepts)))
    categories = [{"id": i + 1, "name": c, "supercategory": "concept"} for i, c in enumerate(concepts)]
    return {
        "info": {"description": description, "model": model},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


class Progress:
    """Prints done/total, rate (images/s) and ETA (s) at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.every_s, self.done = total, every_s, 0
        self.start = self.last = time.monotonic()

    def step(self, note: str = "") -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            print(f"[{self.done}/{self.total}] {rate:.2f} img/s, ETA {eta:.0f} s {note}", flush=True)
            self.last = now
