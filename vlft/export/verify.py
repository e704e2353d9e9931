"""Check an export against what was trained: the written tensors, the official class's logits and greedy
tokens, and the prompt ids the exported chat template + processor files produce.

The logit check loads one model at a time (vlft's, then transformers'), both in fp32 with eager attention
from the same written weights, so a bf16 export is compared without bf16 arithmetic noise and memory
never holds two models.
"""
from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlft.data.dataset import pipeline_from_spec
from vlft.data.prompt import generation_prompt
from vlft.data.record import IMAGE_PLACEHOLDER, Turn
from vlft.data.tiling import tiles_for_image
from vlft.errors import VlftError
from vlft.export.hf_files import exported_spec, read_model_record
from vlft.export.writers import iter_safetensors_dir
from vlft.families import family_named, family_of_processor
from vlft.model.internvl_chat import chat_config_to_native, chat_training_fields, iter_chat_to_native
from vlft.model.layouts import Layout, detect_layout
from vlft.model.load import build_vlm

#: The question the verification prompt asks about its synthetic image.
VERIFY_QUESTION = "What is shown in this image?"


class VerifyError(VlftError):
    """An export that does not behave like the model vlft trained (one line: what differs, by how much)."""


@dataclass
class VerifyReport:
    """Figures of one verification; ``summary()`` is the line the CLI prints."""

    target: str
    tensors: int = 0
    max_abs_logit_diff: float | None = None
    logit_positions: int = 0
    greedy_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    max_abs_pixel_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    config_fields: list[str] = field(default_factory=list)  # computation fields equal to the base's

    def summary(self) -> str:
        parts = [f"verify ({self.target}): {self.tensors} tensors equal to the merged model"]
        if self.config_fields:
            parts.append(f"{len(self.config_fields)} computation fields as the base had them")
        if self.max_abs_logit_diff is not None:
            parts.append(f"max |Δlogit| = {self.max_abs_logit_diff:.2e} over {self.logit_positions} positions")
            parts.append(f"greedy {len(self.greedy_tokens)}/{len(self.greedy_tokens)} tokens equal")
        if self.prompt_tokens:
            parts.append(f"chat template + processor give the training prompt ({self.prompt_tokens} ids)")
        if self.max_abs_pixel_diff is not None:
            parts.append(f"processor pixels within {self.max_abs_pixel_diff:.1e} of training tiles")
        return "; ".join(parts + self.notes)


# ------------------------------------------------------------------------------------------------
# Tensors


def check_written_tensors(written: Iterable[tuple[str, torch.Tensor]], expected: dict[str, torch.Tensor], *,
                          dtype: torch.dtype) -> int:
    """Every written tensor equals the expected one cast to ``dtype``, bit for bit; none missing or extra."""
    seen = set()
    for name, tensor in written:
        if name not in expected:
            raise VerifyError(f"the export holds {name!r}, which the merged model does not have")
        want = expected[name]
        if want.is_floating_point():
            want = want.to(dtype)
        if tensor.shape != want.shape or tensor.dtype != want.dtype or not torch.equal(tensor, want.to("cpu")):
            raise VerifyError(f"{name}: the written tensor differs from the merged model's "
                              f"({tuple(tensor.shape)} {tensor.dtype} vs {tuple(want.shape)} {want.dtype})")
        seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise VerifyError(f"the export lacks {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1
                                                                  else ""))
    return len(seen)


# ------------------------------------------------------------------------------------------------
# Inputs


def synthetic_image(tile_size: int):
    """A deterministic wide image (2.5 tiles x 1 tile): gradients plus a checkerboard, so every tile differs."""
    import numpy as np
    from PIL import Image

    height, width = tile_size, tile_size * 5 // 2
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                    ((x // 7 + y // 7) % 2) * 200 + 27], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


@dataclass
class TrainingPrompt:
    """What training would feed the model for the verification question."""

    input_ids: list[int]
    pixel_values: torch.Tensor  # [tiles, 3, S, S]
    image: object
    #: [1, 2] (height, width) of the image; passed to AnyRes models only (the others take no image_sizes).
    image_sizes: torch.Tensor | None = None

    @property
    def image_inputs(self) -> dict:
        """The keyword arguments both models take besides the ids: pixels (+ image_sizes for AnyRes)."""
        sizes = {} if self.image_sizes is None else {"image_sizes": self.image_sizes}
        return {"pixel_values": self.pixel_values, **sizes}

    def official_inputs(self, family: str) -> dict:
        """image_inputs as the family's official class takes them (pixels per sample for Idefics3 / SmolVLM)."""
        return {**self.image_inputs,
                "pixel_values": family_named(family).official_image_inputs(self.pixel_values)}


def training_prompt(spec, tokenizer, info) -> TrainingPrompt:

    pipeline = pipeline_from_spec(spec, tokenizer, info)
    image = synthetic_image(pipeline.tiling.tile_size)
    pixels = tiles_for_image(image, pipeline.tiling)
    anyres = pipeline.anyres is not None
    ids = generation_prompt(pipeline, [Turn("user", f"{IMAGE_PLACEHOLDER}\n{VERIFY_QUESTION}")], [pixels.shape[0]],
                            image_sizes=[image.size] if pipeline.counts_by_size else None)
    return TrainingPrompt(input_ids=ids, pixel_values=pixels, image=image,
                          image_sizes=torch.tensor([[image.height, image.width]]) if anyres else None)


# ------------------------------------------------------------------------------------------------
# transformers-native export


def official_class_name(family: str) -> str:
    return family_named(family).official_class_name


def official_class_available(family: str) -> bool:
    return family_named(family).official_class_available()


def verify_hf_export(out: str | Path, *, atol: float = 1e-4, new_tokens: int = 16) -> VerifyReport:
    """Load ``out`` with vlft and with transformers' class; compare logits, greedy tokens and prompt ids.

    Raises VerifyError on the first difference.
    """

    out = Path(out)
    record = read_model_record(out)
    spec = exported_spec(out, record, dtype="float32", attn_implementation="eager")
    report = VerifyReport(target="hf")

    ours, tokenizer = build_vlm(spec.model, quantize=False)
    # Training's normalisation, from the record: the export's own preprocessor file is what is checked.
    trained = record["info"]
    info = dataclasses.replace(ours.info, image_mean=trained.get("image_mean"), image_std=trained.get("image_std"))
    prompt = training_prompt(spec, tokenizer, info)
    ids = torch.tensor([prompt.input_ids])
    eos = _eos_ids(out, tokenizer)
    generate_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id
                           is not None else eos[0])
    with torch.no_grad():
        ours.eval()
        our_logits = ours(input_ids=ids, **prompt.image_inputs).logits[0].float()
        our_tokens = ours.generate(ids, attention_mask=torch.ones_like(ids), **prompt.image_inputs,
                                   **generate_kwargs)[0].tolist()
    _free(ours)
    del ours

    theirs = _load_official(out, info.family)
    their_inputs = prompt.official_inputs(info.family)
    with torch.no_grad():
        their_logits = theirs(input_ids=ids, **their_inputs).logits[0].float()
        generated = theirs.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **their_inputs,
                                    **generate_kwargs)
    their_tokens = generated[0, ids.shape[1]:].tolist()
    _free(theirs)
    del theirs

    diff = float((our_logits - their_logits).abs().max())
    report.max_abs_logit_diff, report.logit_positions = diff, our_logits.shape[0]
    if not diff <= atol:  # also catches NaN
        raise VerifyError(f"{out}: transformers' {family_named(info.family).official_class_name} and vlft's "
                          "model differ: "
                          f"max |Δlogit| = {diff:.3e} > {atol:.0e}")
    if our_tokens != their_tokens:
        first = next((i for i, (a, b) in enumerate(zip(our_tokens, their_tokens)) if a != b),
                     min(len(our_tokens), len(their_tokens)))
        raise VerifyError(f"{out}: greedy generation differs from new token {first}: vlft {our_tokens[first:first + 3]}"
                          f" vs transformers {their_tokens[first:first + 3]}")
    report.greedy_tokens = our_tokens

    _check_prompt_files(out, spec, prompt, report)
    return report


def _free(model) -> None:
    """Give a big model's memory back before the next one loads (a full gc is slow, so only when it pays)."""
    if sum(p.numel() for p in model.parameters()) > 50_000_000:
        for param in model.parameters():
            param.data = torch.empty(0, dtype=param.dtype)
        gc.collect()


def _eos_ids(out: Path, tokenizer) -> list[int]:
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(str(out)).eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return eos or [tokenizer.eos_token_id]


def _load_official(out: Path, family: str):
    from transformers import AutoModelForImageTextToText

    try:
        model, loading = AutoModelForImageTextToText.from_pretrained(
            str(out), attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        raise VerifyError(f"{out}: transformers cannot load the export ({str(exc).splitlines()[0]})") from None
    expected = family_named(family).official_class_name
    if type(model).__name__ != expected:
        raise VerifyError(f"{out}: transformers loaded a {type(model).__name__}, not a {expected}")
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(loading.get(kind) or [])
        if keys:
            raise VerifyError(f"{out}: transformers reports {kind.replace('_', ' ')} on load, e.g. {keys[0]!r} "
                              f"({len(keys)} in all)")
    return model.eval()


def _check_prompt_files(out: Path, spec, prompt: TrainingPrompt, report: VerifyReport) -> None:
    """The exported tokenizer's chat template + the processor files must rebuild the training prompt."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    processor = json.loads((out / "processor_config.json").read_text())
    image_processor = AutoImageProcessor.from_pretrained(str(out))
    family = family_of_processor(processor["processor_class"])
    for name, token in family.named_tokens.items():
        if token == family.image_tokens.context_token or token in (family.image_tokens.start_token,
                                                                   family.image_tokens.end_token):
            if getattr(tokenizer, name, None) != token:
                raise VerifyError(f"{out}: the tokenizer does not name {token} as {name}, which "
                                  f"{family.processor_class_name} reads")
    features, expansion = family.processor_text(image_processor, processor, prompt.image)
    placeholder = family.image_placeholder
    pixels = features["pixel_values"]
    if pixels.dim() == 5 and pixels.shape[0] == 1:  # AnyRes processors stack [images, tiles, 3, S, S]
        pixels = pixels[0]
    if pixels.shape == prompt.pixel_values.shape:
        report.max_abs_pixel_diff = float((pixels.float() - prompt.pixel_values).abs().max())
        if report.max_abs_pixel_diff > 1e-4:
            raise VerifyError(f"{out}: the exported image processor's pixels differ from training's tiles by "
                              f"{report.max_abs_pixel_diff:.2e}")
    else:
        report.notes.append(f"processor tiles {tuple(pixels.shape)} differ in shape from training's "
                            f"{tuple(prompt.pixel_values.shape)} (see the export warning)")

    conversations = {
        "string": [{"role": "user", "content": f"<image>\n{VERIFY_QUESTION}"}],
        "content blocks": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": VERIFY_QUESTION}]}],
    }
    for form, messages in conversations.items():
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # What the processors do: expand each image placeholder, then tokenize, skipping a BOS the text has.
        text = text.replace(placeholder, expansion)
        add_special = not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))
        ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        if pixels.shape == prompt.pixel_values.shape and ids != prompt.input_ids:
            first = next((i for i, (a, b) in enumerate(zip(ids, prompt.input_ids)) if a != b),
                         min(len(ids), len(prompt.input_ids)))
            raise VerifyError(f"{out}: the exported chat template ({form} messages) gives other prompt ids than "
                              f"training from position {first} ({len(ids)} vs {len(prompt.input_ids)} ids)")
    report.prompt_tokens = len(prompt.input_ids)


# ------------------------------------------------------------------------------------------------
# The fields that define the computation, against the base


def native_view(path: Path) -> dict:
    """A model directory's config.json as the "-hf" layout says it, defaults filled in (an InternVL-chat
    config through vlft's translation, which has no image-token id)."""
    from transformers import AutoConfig

    if detect_layout(path) is Layout.INTERNVL_CHAT:
        native = chat_config_to_native(json.loads((path / "config.json").read_text()), image_token_id=-1,
                                       allow_ps_v1=True)
        native.pop("image_token_id", None)
        return AutoConfig.for_model(**native).to_dict() | {"image_token_id": None}
    return AutoConfig.from_pretrained(str(path)).to_dict()


def check_computation_fields(out: Path, base: str | Path | None, family: str, *,
                             overrides: dict | None = None) -> list[str]:
    """Each config field that defines the family's computation (feature layer, select strategy,
    image_seq_length, downsample ratio, image-token id) is in the export as in the base, or as the run
    overrode it; VerifyError naming the first field that differs. Returns the fields compared (none for a
    base composed from parts, or one no longer on disk)."""
    if not isinstance(base, (str, Path)) or not (Path(base) / "config.json").is_file():
        return []  # composed from parts (the checkpoint records {"vision": ..., "llm": ...}), or gone
    written, original = native_view(Path(out)), native_view(Path(base))
    expected = {**{name: original.get(name) for name in family_named(family).computation_fields},
                **(overrides or {})}
    compared = []
    for name, want in expected.items():
        if want is None or written.get(name) is None:  # a field one layout does not store (the chat layout's id)
            continue
        if written[name] != want:
            raise VerifyError(f"{out / 'config.json'}: {name}={written[name]!r}, but the base {base} has "
                              f"{want!r}{' (as the run set it)' if name in (overrides or {}) else ''}; the export "
                              "would compute something else")
        compared.append(name)
    return compared


def check_run_fields(out: Path, merged) -> list[str]:
    """check_computation_fields of an export against the merged model's base and the run's overrides."""
    return check_computation_fields(out, merged.provenance.get("base_model"), merged.family,
                                    overrides=run_overrides(merged.spec))


def run_overrides(spec) -> dict:
    """Computation fields the run's config sets over the base's (model.vision.select_layer)."""
    layer = spec.model.vision.select_layer
    return {} if layer is None else {"vision_feature_layer": layer}


# ------------------------------------------------------------------------------------------------
# InternVL-chat export


def verify_internvl_chat_export(out: str | Path, expected: dict[str, torch.Tensor], *, dtype: torch.dtype,
                                training_fields: dict) -> VerifyReport:
    """Read the original-layout weights back through vlft's converter; compare with the merged tensors and
    the config's training fields with the run's."""

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    written = chat_training_fields(config)
    for name, value in training_fields.items():
        if written.get(name) != value:
            raise VerifyError(f"{out / 'config.json'}: {name}={written.get(name)!r}, but training used {value!r}")
    report = VerifyReport(target="internvl-chat")
    report.tensors = check_written_tensors(iter_chat_to_native(iter_safetensors_dir(out), config), expected,
                                           dtype=dtype)
    return report
