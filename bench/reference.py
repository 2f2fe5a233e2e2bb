"""The reference: transformers' eager SAM3 pipeline, in-process, exactly as the seeds serve it.

The seed deployments run ``Sam3Model`` + ``Sam3Processor`` for text prompts and
``Sam3TrackerModel`` + ``Sam3TrackerProcessor`` for points and boxes, on every request from
the encoded image (no embedding cache). :class:`ReferencePipeline` does the same on the CPU in
fp32 (eager), or with ``bf16=True`` under ``torch.autocast("cpu", dtype=torch.bfloat16)`` — the
fastest CPU mode a transformers user has without exporting anything. The benchmark
(bench/run.py) measures our server against both and the parity tests compare the server's
outputs with the fp32 one.

Needs the export extra (torch, transformers). Coordinates are pixels of the original image;
boxes x0, y0, x1, y1; masks bool [H, W] at the original size.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from export.checkpoint import load_models
from sam3_spec import SAM3_INPUTS

DEFAULTS = {t.name: t.default for t in SAM3_INPUTS}  # the served model's request defaults


def decode_image(image_bytes: bytes):
    """Encoded image bytes → RGB PIL image (as the seeds do: ``Image.open(...).convert("RGB")``)."""
    return Image.open(io.BytesIO(image_bytes)).convert("RGB")


class ReferencePipeline:
    """Sam3Model/Sam3TrackerModel and their processors loaded from one checkpoint dir (fp32 weights, eval).

    The models are loaded strictly (export.checkpoint.load_models: no missing/unexpected keys).
    Every call decodes and encodes the image again, one forward per concept, like the seeds.
    ``bf16``: run every forward under CPU bf16 autocast (weights stay fp32; outputs are cast
    back to float32 before post-processing).
    """

    def __init__(self, checkpoint_dir: Path | str, bf16: bool = False):
        from transformers import Sam3Processor, Sam3TrackerProcessor  # noqa: PLC0415 (optional: export extra)

        self.checkpoint = checkpoint_dir  # a directory, or a Hugging Face id as export.checkpoint resolves it
        self.bf16 = bf16
        self.dtype = "bfloat16 autocast" if bf16 else "float32"
        self.model, self.tracker = load_models(self.checkpoint)
        self.processor = Sam3Processor.from_pretrained(self.checkpoint)
        self.tracker_processor = Sam3TrackerProcessor.from_pretrained(self.checkpoint)

    def text(
        self,
        image_bytes: bytes,
        concepts: list[str],
        threshold: float = DEFAULTS["threshold"],
        mask_threshold: float = DEFAULTS["mask_threshold"],
    ):
        """Detections of every concept: (boxes float32 [D,4] xyxy px, scores float32 [D], masks bool [D,H,W]).

        Concepts run one forward each, in order; their detections are concatenated (the server's
        ``labels`` output holds the concept index of each row in the same order).
        """
        image = decode_image(image_bytes)
        parts = [self._one_concept(image, concept, threshold, mask_threshold) for concept in concepts]
        boxes = np.concatenate([b for b, _, _ in parts]).reshape(-1, 4).astype(np.float32)
        scores = np.concatenate([s for _, s, _ in parts]).astype(np.float32)
        masks = np.concatenate([m for _, _, m in parts]).reshape(-1, image.height, image.width).astype(bool)
        return boxes, scores, masks

    def _one_concept(self, image, concept: str, threshold: float, mask_threshold: float):
        """processor(images, text) → Sam3Model → post_process_instance_segmentation, as numpy."""
        inputs = self.processor(images=image, text=concept, return_tensors="pt")
        outputs = self._forward(self.model, inputs)
        result = self.processor.post_process_instance_segmentation(
            outputs,
            threshold=threshold,
            mask_threshold=mask_threshold,
            target_sizes=inputs.get("original_sizes").tolist(),
        )[0]
        return result["boxes"].numpy(), result["scores"].numpy(), result["masks"].numpy()

    def point(self, image_bytes: bytes, points, labels):
        """One object from points [[x, y], ...] px with labels (1 fg, 0 bg).

        Returns (mask bool [H,W], score float, all_scores float32 [3]): the best of the 3
        candidate masks by predicted IoU, as the seeds' ``mask`` / ``score`` / ``all_scores``.
        """
        points = [[float(x), float(y)] for x, y in np.asarray(points, np.float64).reshape(-1, 2)]
        labels = [int(v) for v in np.asarray(labels).reshape(-1)]
        return self._prompt(image_bytes, input_points=[[points]], input_labels=[[labels]])

    def box(self, image_bytes: bytes, box):
        """One object from a box [x0, y0, x1, y1] px; returns (mask bool [H,W], score, all_scores [3])."""
        box = [float(v) for v in np.asarray(box, np.float64).reshape(4)]
        return self._prompt(image_bytes, input_boxes=[[box]])

    def _prompt(self, image_bytes: bytes, **prompts):
        """Sam3TrackerProcessor(images, prompts) → Sam3TrackerModel(multimask_output=True) → post_process_masks."""
        inputs = self.tracker_processor(images=decode_image(image_bytes), return_tensors="pt", **prompts)
        outputs = self._forward(self.tracker, inputs, multimask_output=True)
        masks = self.tracker_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0]
        all_scores = outputs.iou_scores[0, 0].numpy().astype(np.float32)
        best = int(np.argmax(all_scores))
        return masks[0, best].numpy().astype(bool), float(all_scores[best]), all_scores

    def _forward(self, model, inputs, **kwargs):
        """model(**inputs) without grad, under bf16 autocast when asked; floating outputs as float32."""
        import torch  # noqa: PLC0415 (optional: export extra)

        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            outputs = model(**inputs, **kwargs)
        for key, value in list(outputs.items()):
            if torch.is_tensor(value) and value.is_floating_point():
                outputs[key] = value.float()
        return outputs
