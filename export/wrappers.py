"""Trace-friendly nn.Modules, one per exported component (see sam3_spec.py for tensors).

They call transformers' own submodules in the same order as ``Sam3Model.forward`` /
``Sam3TrackerModel.forward`` and remove control flow: optional inputs are padding
(``box_valid``) or flags (``has_mask_input``), never Python branches on data.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy, inverse_sigmoid


class VisionEncoder(nn.Module):
    """uint8 image [B,3,S,S] → detector FPN (3 levels) + tracker embeddings (3 levels).

    Runs the ViT ONCE and feeds both necks. Normalization ((x/255 − 0.5)/0.5) is in-graph.
    """

    def __init__(self, detector, tracker):
        super().__init__()
        self.vit = detector.vision_encoder.backbone
        self.patch = detector.config.vision_config.backbone_config.patch_size
        det_layers = detector.vision_encoder.neck.fpn_layers
        self.det_layers = det_layers[: len(det_layers) - 1]  # Sam3Model drops the last level
        self.trk_layers = tracker.vision_encoder.neck.fpn_layers
        self.conv_s0 = tracker.mask_decoder.conv_s0
        self.conv_s1 = tracker.mask_decoder.conv_s1
        self.no_memory = tracker.no_memory_embedding
        self.trk_levels = len(tracker.backbone_feature_sizes)

    def forward(self, pixel_values: torch.Tensor):
        x = (pixel_values.float() / 255.0 - 0.5) / 0.5
        tokens = self.vit(x).last_hidden_state
        b, s = x.shape[0], x.shape[-1] // self.patch
        spatial = tokens.view(b, s, s, -1).permute(0, 3, 1, 2)
        fpn = [layer(spatial) for layer in self.det_layers]
        return (*fpn, *self._tracker_embeddings(spatial))

    def _tracker_embeddings(self, spatial):
        """Mirror Sam3TrackerModel.get_image_embeddings: conv_s0/s1, +no-memory on the last level."""
        maps = [layer(spatial) for layer in self.trk_layers]
        maps[0], maps[1] = self.conv_s0(maps[0]), self.conv_s1(maps[1])
        maps[-1] = maps[-1] + self.no_memory.view(1, -1, 1, 1)
        return maps[: self.trk_levels]


class TextEncoder(nn.Module):
    """CLIP ids + mask [B,32] → projected features [B,32,hidden] (Sam3Model.get_text_features)."""

    def __init__(self, detector):
        super().__init__()
        self.encoder = detector.text_encoder
        self.projection = detector.text_projection

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        return self.projection(hidden)


class ConceptHead(nn.Module):
    """Detector head for N prompts over ONE image's FPN features (broadcast in-graph).

    Always runs the geometry encoder on K ≥ 1 box slots; rows without a valid box mask all
    geometry tokens (CLS included) so they compute exactly the text-only path. Returns what
    the mask head (:class:`MaskHead`) needs instead of masks: the last decoder queries and
    the image tokens after the mask decoder's prompt cross-attention (``memory``), so masks
    are computed only for the queries the orchestrator keeps.
    """

    def __init__(self, detector):
        super().__init__()
        self.det = nn.ModuleDict({name: getattr(detector, name) for name in self.PARTS})
        self.pos = detector.vision_encoder.neck.position_encoding

    PARTS = ("geometry_encoder", "detr_encoder", "detr_decoder", "dot_product_scoring", "mask_decoder")

    def forward(self, fpn_2, text_features, text_mask, boxes, box_labels, box_valid):
        n = text_features.shape[0]
        feats = [fpn_2.expand(n, -1, -1, -1)]  # Sam3Model reads only the last FPN level here
        pos = [self.pos(feats[0].shape, feats[0].device, feats[0].dtype)]
        prompt, mask = self._prompt(feats, pos, text_features, text_mask, boxes, box_labels, box_valid)
        enc = self.det["detr_encoder"](
            vision_features=feats, text_features=prompt, vision_pos_embeds=pos, text_mask=mask
        )
        dec = self.det["detr_decoder"](
            vision_features=enc.last_hidden_state,
            text_features=enc.text_features,
            vision_pos_encoding=enc.pos_embeds_flattened,
            text_mask=mask,
            spatial_shapes=enc.spatial_shapes,
        )
        logits, pred_boxes = self._scores_and_boxes(dec, enc, mask)
        memory = self._memory(enc.last_hidden_state, prompt, mask, fpn_2.shape[-1])
        return logits, dec.presence_logits[-1], pred_boxes, dec.intermediate_hidden_states[-1], memory

    def _prompt(self, feats, pos, text_features, text_mask, boxes, box_labels, box_valid):
        """Text tokens + geometry tokens and their validity mask (True = valid)."""
        geo = self.det["geometry_encoder"](
            box_embeddings=boxes, box_mask=box_valid, box_labels=box_labels, img_feats=feats, img_pos_embeds=pos
        )
        geo_mask = geo.attention_mask & box_valid.any(dim=1, keepdim=True)
        prompt = torch.cat([text_features, geo.last_hidden_state], dim=1)
        return prompt, torch.cat([text_mask, geo_mask], dim=1)

    def _scores_and_boxes(self, dec, enc, mask):
        hidden = dec.intermediate_hidden_states
        offsets = self.det["detr_decoder"].box_head(hidden[-1])
        boxes = (inverse_sigmoid(dec.reference_boxes[-1]) + offsets).sigmoid()
        logits = self.det["dot_product_scoring"](
            decoder_hidden_states=hidden[-1:], text_features=enc.text_features, text_mask=mask
        ).squeeze(-1)[-1]
        return logits, box_cxcywh_to_xyxy(boxes)

    def _memory(self, encoded, prompt, mask, grid: int):
        """Sam3MaskDecoder's prompt cross-attention, then its image tokens as [N, C, g, g]."""
        head = self.det["mask_decoder"]
        normed = head.prompt_cross_attn_norm(encoded)
        attn_mask = create_bidirectional_mask(
            config=head.config, inputs_embeds=normed, encoder_hidden_states=prompt, attention_mask=mask
        )
        attended, _ = head.prompt_cross_attn(query=normed, key=prompt, value=prompt, attention_mask=attn_mask)
        tokens = (encoded + attended)[:, : grid * grid]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid, grid)


class MaskHead(nn.Module):
    """Sam3MaskDecoder's mask path for K queries per prompt: pixel decoder over (fpn_0, fpn_1,
    memory), instance projection, query mask embedder, dot product → mask logits [N, K, m, m]."""

    def __init__(self, detector):
        super().__init__()
        self.head = detector.mask_decoder

    def forward(self, fpn_0, fpn_1, memory, queries):
        n = memory.shape[0]
        feats = [fpn_0.expand(n, -1, -1, -1), fpn_1.expand(n, -1, -1, -1), memory]
        pixels = self.head.instance_projection(self.head.pixel_decoder(feats))
        return torch.einsum("bqc,bchw->bqhw", self.head.mask_embedder(queries), pixels)


class PromptHead(nn.Module):
    """Tracker prompt encoder + mask decoder for P objects on ONE image (multimask output).

    A padding point (label −1) is always appended, which is what transformers does for
    point-only prompts and, via its box path, for boxes (a box = corners labelled 2 and 3).
    ``has_mask_input`` (0/1) selects between the mask embedding and ``no_mask_embed``.
    """

    def __init__(self, tracker):
        super().__init__()
        self.prompt_encoder = tracker.prompt_encoder
        self.mask_decoder = tracker.mask_decoder
        with torch.no_grad():  # a constant of the config: computed once, stored in the graph
            self.register_buffer("image_pe", tracker.get_image_wide_positional_embeddings().clone())

    def forward(self, track_0, track_1, track_2, point_coords, point_labels, mask_input, has_mask_input):
        enc = self.prompt_encoder
        sparse = enc._embed_points(point_coords[None], point_labels[None], pad=True)
        has = has_mask_input.view(1, 1, 1, 1)
        no_mask = enc.no_mask_embed.weight.view(1, -1, 1, 1)
        dense = has * enc.mask_embed(mask_input) + (1.0 - has) * no_mask
        masks, iou, _, _ = self.mask_decoder(
            image_embeddings=track_2,
            image_positional_embeddings=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=[track_0, track_1],
        )
        return masks[0], iou[0]  # the object score (a tracking signal) is not used for images: not exported


def build_wrappers(detector, tracker) -> dict[str, nn.Module]:
    """{component name: eval-mode wrapper} for every component in sam3_spec.COMPONENTS."""
    wrappers = {
        "vision": VisionEncoder(detector, tracker),
        "text": TextEncoder(detector),
        "concept": ConceptHead(detector),
        "mask": MaskHead(detector),
        "prompt": PromptHead(tracker),
    }
    return {name: w.eval() for name, w in wrappers.items()}
