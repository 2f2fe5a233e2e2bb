"""Export-only rewrites of three transformers SAM3 code paths: two that dynamo cannot trace, one
that exports to slow operators.

Each patch keeps eager outputs identical (checked by the chain parity against the unpatched
models, export/parity.py) and is applied only inside :func:`export_patches`; transformers'
files are never edited.

1. ``Sam3DetrDecoder._get_coords`` builds ``arange(0, height)`` from a spatial-shapes
   *tensor*, a data-dependent size → we give it the static grid side.
2. ``Sam3GeometryEncoder._encode_boxes`` calls ``roi_align(x, boxes.unbind(0))``, which
   freezes the batch size into the graph → we pass one (N·K, 5) ``[batch_idx, x1, y1, x2, y2]``
   tensor instead, which roi_align accepts for any batch size.
3. ``rotate_pairwise`` (the ViT's 2-D RoPE) swaps each pair of channels with unbind + stack, which
   exports as Split + Concat per layer; OpenVINO's CPU plugin runs both with its reference
   kernels (21 ms of the bench model's 117 ms bf16 vision pass). The same rotation as a matmul
   with a constant ±1 permutation matrix runs as one more brgemm: vision bf16 130 → 100 ms, fp32
   218 → 187 ms, ONNX Runtime unchanged. Exact in fp32: each output is one input times ±1.
"""

from __future__ import annotations

import contextlib


def static_get_coords(grid: int):
    """A ``_get_coords`` replacement returning arange(grid)/grid for both axes (float dtype)."""
    import torch  # noqa: PLC0415 (optional: export extra)

    def _get_coords(self, height, width, dtype, device):
        coords = torch.arange(0, grid, device=device, dtype=dtype) / grid
        return coords, coords

    return _get_coords


def rois_from_boxes(boxes_xyxy):
    """(N, K, 4) pixel xyxy boxes → (N·K, 5) rois ``[batch_idx, x1, y1, x2, y2]`` for roi_align."""
    import torch  # noqa: PLC0415 (optional: export extra)

    n, k = boxes_xyxy.shape[:2]
    index = torch.arange(n, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype)[:, None].expand(n, k).reshape(-1)
    return torch.cat([index[:, None], boxes_xyxy.reshape(n * k, 4)], dim=1)


def encode_boxes_with_rois(self, boxes, boxes_mask, boxes_labels, vision_features):
    """Same math as ``Sam3GeometryEncoder._encode_boxes`` with a single rois tensor."""
    import torch  # noqa: PLC0415 (optional: export extra)
    import torchvision  # noqa: PLC0415 (optional: export extra)
    from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy  # noqa: PLC0415 (optional: export extra)

    batch_size, num_boxes = boxes.shape[:2]
    height, width = vision_features.shape[-2:]
    boxes_embed = self.boxes_direct_project(boxes)
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device).view(1, 1, 4)
    rois = rois_from_boxes(box_cxcywh_to_xyxy(boxes) * scale)
    sampled = torchvision.ops.roi_align(vision_features, rois, self.roi_size)
    pooled = self.boxes_pool_project(sampled).view(batch_size, num_boxes, self.hidden_size)
    boxes_embed = boxes_embed + pooled
    cx, cy, w, h = boxes.unbind(-1)
    pos = self._encode_box_coordinates(cx.flatten(), cy.flatten(), w.flatten(), h.flatten())
    boxes_embed = boxes_embed + self.boxes_pos_enc_project(pos.view(batch_size, num_boxes, -1))
    return self.label_embed(boxes_labels.long()) + boxes_embed, boxes_mask


def rotate_pairwise_matmul(x):
    """``rotate_pairwise`` as ``x @ P``: out[..., 2i] = -x[..., 2i+1], out[..., 2i+1] = x[..., 2i].

    x: [..., d] float (d even); P: constant [d, d] with one ±1 per column.
    """
    import torch  # noqa: PLC0415 (optional: export extra)

    d = x.shape[-1]
    even = torch.arange(0, d, 2, device=x.device)
    rotation = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    rotation[even + 1, even] = -1.0
    rotation[even, even + 1] = 1.0
    return x @ rotation


@contextlib.contextmanager
def export_patches(grid: int):
    """Apply the three patches (see module docstring) for the duration of the block."""
    from transformers.models.sam3 import modeling_sam3 as m  # noqa: PLC0415 (optional: export extra)

    saved = (m.Sam3DetrDecoder._get_coords, m.Sam3GeometryEncoder._encode_boxes, m.rotate_pairwise)
    m.Sam3DetrDecoder._get_coords = static_get_coords(grid)
    m.Sam3GeometryEncoder._encode_boxes = encode_boxes_with_rois
    m.rotate_pairwise = rotate_pairwise_matmul
    try:
        yield
    finally:
        m.Sam3DetrDecoder._get_coords, m.Sam3GeometryEncoder._encode_boxes, m.rotate_pairwise = saved
