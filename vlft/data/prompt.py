"""The generation prompt and the stop rule, once, for every place that generates or describes generation:
training-time samples (vlft.engine.train), `vlft chat` / `vlft eval` (vlft.infer), export verification and
the exported ``generation_config.json`` (vlft.export). Two rules written twice stop differently.

Stop rule: every stop word of the template, and its end-of-turn, that the tokenizer writes as one token,
then the tokenizer's eos; stop words that are several tokens (the plain template's "\\n" in some
vocabularies) are stop strings, cut from the decoded text.
"""
from __future__ import annotations

from collections.abc import Sequence

from vlft.data.dataset import DataPipeline
from vlft.data.encode import encode_prompt
from vlft.data.record import Turn
from vlft.data.templates import ChatTemplate


def _stop_words(template: ChatTemplate) -> list[str]:
    words = []
    for word in (*template.stop_words, template.end_of_turn):
        if word and word not in words:
            words.append(word)
    return words


def _single_token(tokenizer, word: str) -> int | None:
    ids = tokenizer.encode(word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def stop_token_ids(tokenizer, template: ChatTemplate) -> list[int]:
    """Ids that end a reply, in order: the template's one-token stop words and end-of-turn, then eos."""
    ids: list[int] = []
    for word in _stop_words(template):
        token = _single_token(tokenizer, word)
        if token is not None and token not in ids:
            ids.append(token)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def stop_strings(tokenizer, template: ChatTemplate) -> list[str]:
    """Stop words the tokenizer writes as several tokens: generation stops on them as text."""
    return [word for word in _stop_words(template) if _single_token(tokenizer, word) is None]


def stop_kwargs(tokenizer, template: ChatTemplate) -> dict:
    """``model.generate`` keyword arguments for the stop rule (eos ids; stop strings when there are any)."""
    kwargs: dict = {"eos_token_id": stop_token_ids(tokenizer, template)}
    strings = stop_strings(tokenizer, template)
    if strings:
        kwargs.update(stop_strings=strings, tokenizer=tokenizer)
    return kwargs


def generation_prompt(pipeline: DataPipeline, turns: Sequence[Turn], tiles_per_image: Sequence[int], *,
                      where: str = "prompt", image_sizes: Sequence[tuple[int, int]] | None = None) -> list[int]:
    """Ids of the conversation so far + the assistant header, images expanded exactly as training does.

    ``tiles_per_image``: tiles of each image, in placeholder order. ``image_sizes``: (width, height) of each
    image, which an AnyRes or split model's token count follows (pipeline.counts_by_size; required there).
    """
    if image_sizes is None:
        if pipeline.counts_by_size and tiles_per_image:
            raise ValueError(f"{where}: this model counts an image's tokens from its size: pass image_sizes")
        image_sizes = [(0, 0)] * len(tiles_per_image)
    tokens = pipeline.image_tokens_per_image(list(image_sizes), list(tiles_per_image), where=where)
    return encode_prompt(turns, pipeline.tokenizer, pipeline.template, image_tokens=pipeline.image_tokens,
                         tokens_per_image=tokens, system_prompt=pipeline.system_prompt, where=where)
