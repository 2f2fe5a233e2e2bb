"""Deterministic example inputs for a component at given axis sizes (export + parity).

Values are realistic for each tensor: uint8 pixels, CLIP ids with bos/eos/padding, boxes
inside the image, point labels in {0, 1}, masks with padding — so parity exercises the
same code paths as serving.
"""

from __future__ import annotations

import numpy as np

from sam3_spec import NP_DTYPES, ComponentSpec, TensorSpec

BOS, EOS = 49406, 49407


def example_inputs(spec: ComponentSpec, sizes: dict[str, int], image_size: int, seed: int = 0) -> dict:
    """{input name: numpy array} for ``spec`` with dynamic axes set to ``sizes``."""
    rng = np.random.default_rng(seed)
    return {t.name: _value(t, t.resolve(sizes), rng, image_size) for t in spec.inputs}


def _value(t: TensorSpec, shape: tuple, rng, image_size: int) -> np.ndarray:
    maker = _MAKERS.get(t.name)
    if maker is not None:
        return maker(shape, rng, image_size).astype(NP_DTYPES[t.dtype])
    if t.dtype == "UINT8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(NP_DTYPES[t.dtype])


def _input_ids(shape, rng, _):
    ids = np.full(shape, EOS, dtype=np.int64)
    for row, n in enumerate(_lengths(shape)):
        ids[row, 0] = BOS
        ids[row, 1 : n - 1] = rng.integers(0, BOS, n - 2)
    return ids


def _lengths(shape):
    """Token counts per row (≥ 3: bos, one word, eos), different per row, same for ids and mask."""
    return [3 + (7 * i + 2) % (shape[1] - 3) for i in range(shape[0])]


def _attention_mask(shape, rng, _):
    mask = np.zeros(shape, dtype=np.int64)
    for row, n in enumerate(_lengths(shape)):
        mask[row, :n] = 1
    return mask


def _boxes(shape, rng, _):
    centers = rng.uniform(0.3, 0.7, shape[:-1] + (2,))
    sizes = rng.uniform(0.1, 0.4, shape[:-1] + (2,))
    return np.concatenate([centers, sizes], axis=-1)


def _box_valid(shape, rng, _):
    valid = np.ones(shape, dtype=bool)
    valid[0, :] = False  # first row: text only (padding slots)
    if shape[1] > 1:
        valid[-1, -1] = False  # a padding slot after a valid box
    return valid


_MAKERS = {
    "input_ids": _input_ids,
    "attention_mask": _attention_mask,
    "boxes": _boxes,
    "box_labels": lambda s, r, _: r.integers(0, 2, s),
    "box_valid": _box_valid,
    "text_mask": lambda s, r, _: _attention_mask(s, r, _).astype(bool),
    "point_coords": lambda s, r, size: r.uniform(0, size - 1, s),
    "point_labels": lambda s, r, _: r.integers(0, 2, s),
    "mask_input": lambda s, r, _: r.standard_normal(s) * 4,
    "has_mask_input": lambda s, r, _: np.ones(s),
}
