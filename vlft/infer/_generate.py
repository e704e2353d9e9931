"""Prompts -> replies: the same template and tiling as training, left-padded batches, stop at the stop words."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vlft.data.dataset import DataPipeline
from vlft.data.prompt import generation_prompt, stop_kwargs, stop_strings
from vlft.data.prompt import stop_token_ids as template_stop_ids
from vlft.data.record import Sample
from vlft.data.templates import UnknownTemplateError, get_template
from vlft.errors import ConfigError


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are generated; checked on construction, so chat and eval refuse bad flags before loading."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also refuses nan
            raise ConfigError(f"--temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")


def check_template_flag(template: str | None) -> None:
    """A --template that names no registered template: one line naming the flag and the known names."""
    if template is None:
        return
    try:
        get_template(template)
    except UnknownTemplateError as exc:
        raise ConfigError(f"--template: {exc}") from None


class PromptTooLong(ConfigError):
    """A prompt that, with the reply it may grow, does not fit the model's context."""


def context_length(model) -> int | None:
    """The LLM's max_position_embeddings (its text config), None when it does not say."""
    config = getattr(getattr(model, "language_model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_prompt_length(model, prompt_tokens: int, settings: GenerationSettings, *, where: str) -> None:
    """PromptTooLong when the prompt plus --max-new-tokens exceed the model's context: a long prompt would
    otherwise run for minutes, grow memory without bound and answer from positions the model never saw."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + settings.max_new_tokens > limit:
        raise PromptTooLong(
            f"{where}: the prompt is {prompt_tokens:,} tokens; with --max-new-tokens {settings.max_new_tokens} "
            f"that is {prompt_tokens + settings.max_new_tokens:,}, over the model's max_position_embeddings "
            f"{limit:,}; shorten the prompt (images count too) or lower --max-new-tokens")


@dataclass(frozen=True)
class PromptInputs:
    input_ids: list[int]
    pixel_values: torch.Tensor  # [tiles, 3, S, S] of all images of the conversation, in order
    #: [images, 2] (height, width) of each image, which an AnyRes model's packing reads (None: not AnyRes).
    image_sizes: torch.Tensor | None = None


def prompt_ids(pipeline: DataPipeline, sample: Sample) -> list[int]:
    """Ids of the conversation + the generation prompt, images expanded (tile counts from the headers only)."""
    sizes = None
    if pipeline.counts_by_size:
        sizes = [(int(w), int(h)) for h, w in pipeline.image_sizes(sample).tolist()]
    return generation_prompt(pipeline, sample.turns, pipeline.tile_counts(sample), where=sample.where,
                             image_sizes=sizes)


def prompt_inputs(pipeline: DataPipeline, sample: Sample, ids: list[int] | None = None) -> PromptInputs:
    """Ids and pixels, exactly as training encodes them (`ids` when already computed)."""
    sizes = pipeline.image_sizes(sample) if pipeline.anyres is not None else None
    return PromptInputs(prompt_ids(pipeline, sample) if ids is None else ids, pipeline.pixels(sample), sizes)


def stop_token_ids(pipeline: DataPipeline) -> list[int]:
    """Ids that end a reply (vlft.data.prompt's rule, which training samples and exports share)."""
    return template_stop_ids(pipeline.tokenizer, pipeline.template)


def multi_token_stops(pipeline: DataPipeline) -> list[str]:
    """Stop words that are not one token (e.g. the plain template's "\\n"): cut from the decoded text."""
    return stop_strings(pipeline.tokenizer, pipeline.template)


def generate_kwargs(pipeline: DataPipeline, settings: GenerationSettings) -> dict:
    tokenizer = pipeline.tokenizer
    kwargs = dict(max_new_tokens=settings.max_new_tokens, **stop_kwargs(tokenizer, pipeline.template))
    stops = kwargs["eos_token_id"]
    kwargs["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False)
    return kwargs


def decode_reply(pipeline: DataPipeline, new_ids) -> str:
    """The reply text: tokens up to the first stop id, special tokens dropped, cut at a text stop word."""
    stops = set(stop_token_ids(pipeline))
    ids = []
    for token in (new_ids.tolist() if hasattr(new_ids, "tolist") else new_ids):
        if token in stops:
            break
        ids.append(token)
    text = pipeline.tokenizer.decode(ids, skip_special_tokens=True)
    for word in multi_token_stops(pipeline):
        text = text.split(word)[0]
    return text.strip()


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the left (generation continues from the right end): ids [B, T], attention mask [B, T]."""
    longest = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids):] = 1
    return input_ids, mask


@torch.no_grad()
def generate_batch(model, pipeline: DataPipeline, prompts: list[PromptInputs], settings: GenerationSettings,
                   streamer=None) -> list[str]:
    """One reply per prompt, generated together (left padding)."""
    kwargs = generate_kwargs(pipeline, settings)
    input_ids, mask = left_pad([p.input_ids for p in prompts], kwargs["pad_token_id"])
    pixels = torch.cat([p.pixel_values for p in prompts])
    if pipeline.anyres is not None:
        kwargs["image_sizes"] = torch.cat([p.image_sizes for p in prompts]).to(model.device)
    new = model.generate(input_ids.to(model.device), pixels.to(model.device) if pixels.numel() else None,
                         mask.to(model.device), streamer=streamer, **kwargs)
    return [decode_reply(pipeline, row) for row in new]
