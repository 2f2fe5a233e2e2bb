"""The prompt modes of SAM3 on top of the component calls (stages.py).

One request → one :class:`Sam3Result`. The image is decoded and resized once and its
embedding cached (by ``image_id`` or a hash of the bytes); text features are cached per
concept string. Post-processing follows transformers exactly (postprocess.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import postprocess as post
import preprocess as pre
from amg import AmgConfig, AutomaticMaskGenerator
from cache import ByteLRU, content_key
from errors import InputError
from request import Sam3Request

VISION_OUTPUTS = ("fpn_0", "fpn_1", "fpn_2", "track_0", "track_1", "track_2")
BOX_ONLY_TEXT = "visual"  # transformers' text for exemplar-box-only prompts


@dataclass
class Sam3Result:
    """Detections in original-image pixels. D detections; masks bool [D, H, W]."""

    masks: np.ndarray
    boxes: np.ndarray          # float32 [D, 4] x1, y1, x2, y2
    scores: np.ndarray         # float32 [D]
    labels: np.ndarray         # int32 [D] concept index / prompt object index
    iou_scores: np.ndarray     # float32 [D, C] candidate IoU predictions (C = 0 for text)
    stability: np.ndarray      # float32 [D] (auto mode)
    image_hw: tuple[int, int]


@dataclass
class Features:
    """A cached image embedding: the vision outputs and the original size."""

    outputs: dict
    image_hw: tuple[int, int]


class Sam3Pipeline:
    """Runs every mode. ``stages``: BlsStages or OrtStages; ``dims``: export.spec.Dims."""

    def __init__(self, stages, tokenizer, dims, image_cache: ByteLRU, text_cache: ByteLRU,
                 max_pixels: int = 40_000_000, max_concepts_per_call: int = 8, max_objects_per_call: int = 64,
                 post=post):
        """``post``: the post-processing module — postprocess (numpy, CPU) or postprocess_torch (GPU)."""
        self.stages, self.tokenizer, self.dims, self.post = stages, tokenizer, dims, post
        self.image_cache, self.text_cache = image_cache, text_cache
        self.max_pixels = max_pixels
        self.chunk_concepts, self.chunk_objects = max_concepts_per_call, max_objects_per_call

    def run(self, req: Sam3Request) -> Sam3Result:
        handler = {"text": self._text, "point": self._point, "box": self._box, "auto": self._auto}[req.mode]
        return handler(req)

    # ---- shared stages -------------------------------------------------------------------------

    def _cache_key(self, req: Sam3Request) -> str:
        return "id:" + req.image_id if req.image_id else content_key(req.image)

    def _decode(self, req: Sam3Request):
        """(pixels uint8 [1,3,S,S], (H, W)) of the request image."""
        if not req.image:
            raise InputError(f"image_id {req.image_id!r} is not in the embedding cache (never sent, or evicted): "
                             "send the image with it")
        image = pre.decode_image(req.image, self.max_pixels)
        return pre.resize_for_model(image, self.dims.image_size), image.shape[:2]

    def image_features(self, req: Sam3Request) -> Features:
        """Vision outputs of the request image, from the cache or one vision call."""
        return self.features_and_text(req, [])[0]

    def features_and_text(self, req: Sam3Request, texts: list[str]):
        """(Features, text features [N,32,C], text mask bool [N,32]); what is missing runs in parallel."""
        key = self._cache_key(req)
        features = self.image_cache.get(key)
        known = {t: self.text_cache.get(t) for t in dict.fromkeys(texts)}
        missing = [t for t, v in known.items() if v is None]
        calls = []
        if features is None:
            pixels, image_hw = self._decode(req)
            calls.append(("vision", {"pixel_values": pixels}))
        if missing:
            ids, mask = self.tokenizer.encode(missing)
            calls.append(("text", {"input_ids": ids, "attention_mask": mask}))
        results = self.stages.run_parallel(calls) if calls else []
        if features is None:
            features = Features(results.pop(0), image_hw)
            self.image_cache.put(key, features)
        for i, text in enumerate(missing):
            known[text] = (_host(results[0]["text_features"][i]), mask[i].astype(bool))
            self.text_cache.put(text, known[text])
        return features, _stack([known[t] for t in texts])

    # ---- text concepts (+ exemplar boxes) ------------------------------------------------------

    def _text(self, req: Sam3Request) -> Sam3Result:
        texts = req.texts or [BOX_ONLY_TEXT]
        features, (text_features, text_mask) = self.features_and_text(req, texts)
        boxes, labels, valid = self._exemplars(req, features.image_hw, len(texts))
        fpn = {k: features.outputs[k] for k in ("fpn_0", "fpn_1", "fpn_2")}
        detections = []
        for sl in _chunks(len(texts), self.chunk_concepts):
            out = self.stages.run("concept", fpn | {"text_features": text_features[sl], "text_mask": text_mask[sl],
                                                    "boxes": boxes[sl], "box_labels": labels[sl], "box_valid": valid[sl]})
            detections += self.post.concept_detections(out["logits"], out["presence_logits"], out["pred_boxes"],
                                                        out["pred_masks"], features.image_hw, req.threshold,
                                                        req.mask_threshold)
        return _concept_result(detections, features.image_hw)

    def _exemplars(self, req: Sam3Request, image_hw, n: int):
        """(boxes cxcywh [n,K,4], labels int64 [n,K], valid bool [n,K]); one padding slot if none."""
        if req.boxes is None:
            pad = np.array([[[0.5, 0.5, 0.1, 0.1]]], np.float32)
            return np.repeat(pad, n, 0), np.zeros((n, 1), np.int64), np.zeros((n, 1), bool)
        boxes = pre.validate_boxes(req.boxes, image_hw, "boxes")
        labels = pre.validate_box_labels(req.box_labels, len(boxes))
        cxcywh = pre.boxes_xyxy_to_cxcywh_norm(boxes, image_hw).astype(np.float32)
        return (np.repeat(cxcywh[None], n, 0), np.repeat(labels[None], n, 0),
                np.ones((n, len(boxes)), bool))

    # ---- points / boxes (tracker head) ---------------------------------------------------------

    def _point(self, req: Sam3Request) -> Sam3Result:
        features = self.image_features(req)
        points, labels = pre.validate_points(req.points, req.point_labels, features.image_hw)
        coords = pre.scale_points(points, features.image_hw, self.dims.image_size)
        return self._prompt_result(features, coords[None], labels[None], req)

    def _box(self, req: Sam3Request) -> Sam3Result:
        """One object per box; extra points (if any) join every box, before its corners."""
        features = self.image_features(req)
        hw, size = features.image_hw, self.dims.image_size
        boxes = pre.validate_boxes(req.boxes, hw, "boxes")
        coords = pre.scale_points(boxes.reshape(-1, 2, 2), hw, size)
        labels = np.tile(np.array([2, 3], np.int64), (len(boxes), 1))
        if req.points is not None:
            points, point_labels = pre.validate_points(req.points, req.point_labels, hw)
            coords = np.concatenate([np.repeat(pre.scale_points(points, hw, size)[None], len(boxes), 0), coords], 1)
            labels = np.concatenate([np.repeat(point_labels[None], len(boxes), 0), labels], 1)
        return self._prompt_result(features, coords, labels, req)

    def prompt_call(self, features: Features, coords: np.ndarray, labels: np.ndarray) -> dict:
        """sam3_prompt for P objects: coords float32 [P,K,2] in the model frame, labels int64 [P,K]."""
        m = self.dims.mask_size
        feeds = {k: features.outputs[k] for k in ("track_0", "track_1", "track_2")}
        feeds |= {"point_coords": coords.astype(np.float32), "point_labels": labels.astype(np.int64),
                  "mask_input": np.zeros((1, 1, m, m), np.float32), "has_mask_input": np.zeros(1, np.float32)}
        return self.stages.run("prompt", feeds)

    def _prompt_result(self, features: Features, coords, labels, req: Sam3Request) -> Sam3Result:
        """Best of the 3 candidate masks per object, upsampled and binarized."""
        outs = [self.prompt_call(features, coords[sl], labels[sl]) for sl in _chunks(len(coords), self.chunk_objects)]
        masks, iou = self.post.best_prompt_masks(outs, features.image_hw, post.prob_to_logit(req.mask_threshold))
        return Sam3Result(masks, post.masks_to_boxes_xyxy(masks), iou.max(-1), np.arange(len(iou), dtype=np.int32),
                          iou, np.zeros(len(iou), np.float32), features.image_hw)

    # ---- automatic ("segment everything") ------------------------------------------------------

    def _auto(self, req: Sam3Request) -> Sam3Result:
        features = self.image_features(req)

        def run_batch(points, labels):
            out = self.prompt_call(features, points, labels)
            return _host(out["pred_masks"]), _host(out["iou_scores"])
        generator = AutomaticMaskGenerator(AmgConfig(
            points_per_side=req.points_per_side, points_per_batch=req.points_per_batch,
            pred_iou_thresh=req.pred_iou_thresh, stability_score_thresh=req.stability_score_thresh))
        records = generator.generate(run_batch, features.image_hw, self.dims.image_size)
        return _auto_result(records, features.image_hw)


def _host(x) -> np.ndarray:
    """A numpy array of ``x`` (GPU tensors are copied to the host)."""
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


def _empty_masks(image_hw) -> np.ndarray:
    return np.zeros((0,) + tuple(image_hw), bool)


def _concept_result(detections: list, image_hw) -> Sam3Result:
    """Concatenate per-concept (scores, boxes, masks); label = concept index."""
    labels = np.concatenate([np.full(len(s), i, np.int32) for i, (s, _, _) in enumerate(detections)])
    scores = np.concatenate([s for s, _, _ in detections]).astype(np.float32)
    boxes = np.concatenate([b for _, b, _ in detections]).reshape(-1, 4).astype(np.float32)
    masks = np.concatenate([m for _, _, m in detections]) if len(scores) else _empty_masks(image_hw)
    return Sam3Result(masks, boxes, scores, labels, np.zeros((len(scores), 0), np.float32),
                      np.zeros(len(scores), np.float32), image_hw)


def _auto_result(records: list[dict], image_hw) -> Sam3Result:
    """AMG records (segmentation, bbox xywh, predicted_iou, stability_score) → Sam3Result."""
    n = len(records)
    masks = np.stack([r["segmentation"] for r in records]) if n else _empty_masks(image_hw)
    xywh = np.array([r["bbox"] for r in records], np.float32).reshape(n, 4)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    iou = np.array([r["predicted_iou"] for r in records], np.float32)
    stability = np.array([r["stability_score"] for r in records], np.float32)
    return Sam3Result(masks, boxes, iou, np.arange(n, dtype=np.int32), iou[:, None], stability, image_hw)


def _stack(items: list[tuple]):
    """[(features [32,C], mask [32])] → (features [N,32,C], mask [N,32]) or (None, None)."""
    if not items:
        return None, None
    return np.stack([f for f, _ in items]), np.stack([m for _, m in items])
