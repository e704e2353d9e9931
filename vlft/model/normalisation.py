"""The pixel mean/std a base model was trained with: its preprocessor_config.json when it has one, else the
usual values of its vision tower (SigLIP bases use 0.5/0.5, not the family's CLIP values).

Training (vlft.data.dataset) and the exported processor (vlft.export.hf_files) read the result from VLMInfo
through `vlft.families.normalisation_of`, so both normalise the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlft.data.tiling import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

#: The processors' defaults per tower model_type (transformers' SiglipImageProcessor, CLIPImageProcessor,
#: InternVL's GotOcr2ImageProcessor).
TOWER_NORMALISATION = {
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "internvl_vision": (IMAGENET_MEAN, IMAGENET_STD),
}


def base_normalisation(folder: str | Path | None, tower_type: str | None) -> dict:
    """{"image_mean": (r, g, b), "image_std": (r, g, b)} for VLMInfo, or {} when neither source knows.

    folder: the base directory (its preprocessor_config.json); tower_type: the vision config's model_type."""
    pre = Path(folder) / "preprocessor_config.json" if folder else None
    if pre is not None and pre.is_file():
        try:
            values = json.loads(pre.read_text())
        except (OSError, ValueError):
            values = {}  # a damaged preprocessor file: the tower's values, as with none
        mean, std = values.get("image_mean"), values.get("image_std")
        if _three(mean) and _three(std):
            return {"image_mean": tuple(float(v) for v in mean), "image_std": tuple(float(v) for v in std)}
    known = TOWER_NORMALISATION.get(tower_type or "")
    return {"image_mean": known[0], "image_std": known[1]} if known else {}


def _three(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
