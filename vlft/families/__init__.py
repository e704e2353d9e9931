"""Model families as seams: one `Family` per module, looked up here (see family.py for what one holds).

    family_named("internvl").official_class_name     -> "InternVLForConditionalGeneration"
    family_of_config({"model_type": "llava", ...})    -> LLAVA (None for no family's "-hf" config)

A new family is one module with its `Family` plus an entry in FAMILIES.
"""
from __future__ import annotations

from vlft.families.family import Family, ImageTokens
from vlft.families.idefics3 import IDEFICS3, SMOLVLM
from vlft.families.internvl import INTERNVL
from vlft.families.llava import LLAVA
from vlft.families.llava_next import LLAVA_NEXT
from vlft.families.llava_onevision import LLAVA_ONEVISION

FAMILIES: dict[str, Family] = {family.name: family for family in (INTERNVL, LLAVA, LLAVA_NEXT, LLAVA_ONEVISION,
                                                                   IDEFICS3, SMOLVLM)}


def family_named(name: str) -> Family:
    """The family called ``name`` (a config's model.family, a checkpoint's info.family)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_of_config(config: dict) -> Family | None:
    """The family whose "-hf" layout a config.json is (its model_type), or None."""
    return FAMILIES.get(config.get("model_type", ""))


def family_of_layout(layout) -> Family:
    """The family of a `vlft.model.layouts.Layout` of a whole VLM (the InternVL-chat layout is InternVL's)."""
    for family in FAMILIES.values():
        if layout.value == family.hf_layout:
            return family
    if layout.name == "INTERNVL_CHAT":
        return INTERNVL
    raise KeyError(f"a {layout.value} directory belongs to no model family")


def normalisation_of(info) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) a model's pixels are normalised with: the base's own (VLMInfo.image_mean / image_std, read
    from its preprocessor or its tower), else its family's."""
    family = family_named(info.family)
    mean, std = getattr(info, "image_mean", None), getattr(info, "image_std", None)
    if mean is None or std is None:
        return family.mean, family.std
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def family_of_processor(processor_class: str) -> Family:
    """The family whose processor processor_config.json names."""
    for family in FAMILIES.values():
        if family.processor_class_name == processor_class:
            return family
    raise KeyError(f"processor_class {processor_class!r} belongs to no model family")


__all__ = ["FAMILIES", "IDEFICS3", "INTERNVL", "SMOLVLM", "LLAVA", "LLAVA_NEXT", "LLAVA_ONEVISION", "Family", "ImageTokens", "family_named", "family_of_config",
           "family_of_layout", "family_of_processor", "normalisation_of"]
