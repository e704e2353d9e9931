"""One conversation sample -> token ids and labels (loss on the assistant replies only), images expanded.

The rendered text is tokenized in one call, with one image-context token standing in for each image, and
each of those is then expanded into its run of ids (``<img>`` + ``<IMG_CONTEXT>``*n + ``</img>``, or
``<image>``*n). Special tokens are matched before BPE, so this gives exactly the ids of the fully expanded
text -- what transformers' processors feed the model -- without pushing thousands of context tokens through
the tokenizer. Labels come from character offsets: a token is trained when it overlaps a reply (or its
end-of-turn). Tokenizing template pieces one by one instead would disagree with the tokenizer wherever BPE
merges across a piece boundary (Vicuna's ``"questions. USER:"`` holds the token ``" USER"``).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from .problems import BAD_SAMPLE, EMPTY_ANSWER, NO_ASSISTANT
from .record import IMAGE_PLACEHOLDER, ROLES, Sample, Turn
from vlft.families import INTERNVL, LLAVA, ImageTokens

from .templates import ChatTemplate

IGNORE_INDEX = -100


class SampleError(ValueError):
    """A sample that cannot be encoded; the message starts with ``sample.where`` (``file:id``).

    ``kind`` names the problem as `vlft.data.problems` does, for training's counts and check-data's report.
    """

    def __init__(self, message: str, kind: str = BAD_SAMPLE):
        super().__init__(message)
        self.kind = kind


#: The families' image tokens, for callers that name one directly (tests, tools); the family is the source.
INTERNVL_IMAGE_TOKENS = INTERNVL.image_tokens
LLAVA_IMAGE_TOKENS = LLAVA.image_tokens


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int]          # IGNORE_INDEX except the assistant replies and their end-of-turn token(s)
    num_image_tokens: int      # total context tokens (sum over images)
    image_spans: tuple[tuple[int, int], ...]  # [start, end) of each image run incl. <img>/</img>: never cut


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_turns(turns: Sequence[Turn], n_images: int | None, where: str, *, need_assistant: bool) -> None:
    """Raise SampleError (prefixed with ``where``) for a conversation no template can render."""
    if not turns:
        raise SampleError(f"{where}: empty conversation")
    placeholders = 0
    for i, turn in enumerate(turns):
        if turn.role not in ROLES:
            raise SampleError(f"{where}: turn {i} has role {turn.role!r}; expected one of {', '.join(ROLES)}")
        if turn.role == "system" and i > 0:
            raise SampleError(f"{where}: turn {i} is a system turn; only the first turn may be one")
        n = turn.text.count(IMAGE_PLACEHOLDER)
        if n and turn.role != "user":
            what = _plural(n, IMAGE_PLACEHOLDER + " placeholder")
            raise SampleError(f"{where}: {turn.role} turn {i} contains {what}; images belong in user turns")
        placeholders += n
    if need_assistant and not any(turn.role == "assistant" for turn in turns):
        raise SampleError(f"{where}: no assistant turn, so nothing to train on", NO_ASSISTANT)
    if need_assistant:
        # An empty reply would teach the model to end its turn at once; XTuner and LLaMA-Factory users
        # filter such rows out, so they are dropped here as bad samples, never trained silently.
        empty = [i for i, turn in enumerate(turns) if turn.role == "assistant" and not turn.text.strip()]
        if empty:
            raise SampleError(f"{where}: assistant turn {empty[0]} is an empty answer (nothing to learn but "
                              "to stop at once)", EMPTY_ANSWER)
    if n_images is not None and placeholders != n_images:
        raise SampleError(f"{where}: {_plural(placeholders, IMAGE_PLACEHOLDER + ' placeholder')} "
                          f"but {_plural(n_images, 'image')}")


def _pieces(turns: Sequence[Turn], template: ChatTemplate, system_prompt: str | None,
            add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The conversation as (text, trained) pieces; user pieces keep their "<image>" placeholders."""
    turns = list(turns)
    system = template.default_system if system_prompt is None else system_prompt
    if turns and turns[0].role == "system":  # the sample's own system prompt wins
        system, turns = turns[0].text, turns[1:]
    pieces = [(template.bos, False)]
    if template.system and system:
        pieces.append((template.wrap_system(system), False))
    for turn in turns:
        if turn.role == "user":
            content = turn.text if template.user_text else IMAGE_PLACEHOLDER * turn.text.count(IMAGE_PLACEHOLDER)
            pieces.append((template.wrap_user(content), False))
        else:
            pieces += [(template.assistant_header, False),
                       (template.reply_prefix + turn.text + template.end_of_turn, True),
                       (template.separator, False)]
    if add_generation_prompt:
        pieces.append((template.assistant_header, False))
    return [(text, trained) for text, trained in pieces if text]


def render_text(turns: Sequence[Turn], template: ChatTemplate, system_prompt: str | None = None,
                add_generation_prompt: bool = False) -> str:
    """The conversation as text, with "<image>" placeholders (before expansion).

    ``system_prompt`` replaces the template's default; a first turn with role "system" replaces both.
    """
    _check_turns(turns, None, "conversation", need_assistant=False)
    return "".join(text for text, _ in _pieces(turns, template, system_prompt, add_generation_prompt))


def _token_id(tokenizer, token: str, *, required: bool = True) -> int | None:
    """The id of ``token``; None (or ValueError when required) if the tokenizer does not know it."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        if required:
            raise ValueError(f"the tokenizer has no token {token!r}: add it as a special token, "
                             "or use the ImageTokens of this model family")
        return None
    return token_id


def _trained_flags(offsets: Sequence[tuple[int, int]], ranges: Sequence[tuple[int, int]]) -> list[bool]:
    """For each token's (start, end) character span: does it overlap one of the sorted, disjoint ranges?"""
    flags, j = [], 0
    for start, end in offsets:
        end = max(end, start + 1)  # a zero-width token counts as the character at its start
        while j < len(ranges) and ranges[j][1] <= start:
            j += 1
        flags.append(j < len(ranges) and ranges[j][0] < end)
    return flags


def _encode(pieces: list[tuple[str, bool]], tokenizer, image_tokens: ImageTokens,
            tokens_per_image: Sequence[int], where: str) -> EncodedSample:
    need_ids = len(tokens_per_image) > 0  # a text-only conversation may use a tokenizer without image tokens
    context_id = _token_id(tokenizer, image_tokens.context_token, required=need_ids)
    pieces = [(text if trained else text.replace(IMAGE_PLACEHOLDER, image_tokens.context_token), trained)
              for text, trained in pieces]
    if getattr(tokenizer, "is_fast", False):
        text, ranges, pos = "".join(t for t, _ in pieces), [], 0
        for piece, trained in pieces:
            if trained:
                ranges.append((pos, pos + len(piece)))
            pos += len(piece)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        flags = _trained_flags(encoding["offset_mapping"], ranges)
    else:  # slow tokenizers give no offsets: tokenize piece by piece
        ids, flags = [], []
        for piece, trained in pieces:
            piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += piece_ids
            flags += [trained] * len(piece_ids)

    found = ids.count(context_id) if context_id is not None else 0
    if found != len(tokens_per_image):
        raise SampleError(f"{where}: {found} {image_tokens.context_token} tokens in the tokenized text but "
                          f"{_plural(len(tokens_per_image), 'image')}; the text must not contain "
                          f"{image_tokens.context_token} literally")
    run_ends: tuple[list[int], list[int]] = ([], [])
    if image_tokens.wraps:
        start_id = _token_id(tokenizer, image_tokens.start_token, required=need_ids)
        end_id = _token_id(tokenizer, image_tokens.end_token, required=need_ids)
        if {start_id, end_id} & set(ids):
            raise SampleError(f"{where}: the text contains {image_tokens.start_token} or {image_tokens.end_token} "
                              "literally; only <image> placeholders may mark images")
        run_ends = ([start_id], [end_id])
    if image_tokens.marker_tokens and need_ids:
        present = set(ids)
        literal = [token for token in image_tokens.marker_tokens
                   if _token_id(tokenizer, token, required=False) in present]
        if literal:
            raise SampleError(f"{where}: the text contains {literal[0]} literally, which marks image tiles; only "
                              "<image> placeholders may mark images")

    input_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    n_images = 0
    n_context = 0
    for token_id, trained in zip(ids, flags):
        if token_id == context_id:
            given = tokens_per_image[n_images]
            # An int is a count (start + context*n + end); a tuple is the image's whole run (split tiles).
            run = list(given) if isinstance(given, tuple) else run_ends[0] + [context_id] * given + run_ends[1]
            n_context += run.count(context_id)
            spans.append((len(input_ids), len(input_ids) + len(run)))
            input_ids += run
            labels += [IGNORE_INDEX] * len(run)
            n_images += 1
        else:
            input_ids.append(token_id)
            labels.append(token_id if trained else IGNORE_INDEX)
    return EncodedSample(input_ids=input_ids, labels=labels, num_image_tokens=n_context,
                         image_spans=tuple(spans))


def _check_tokens_per_image(tokens_per_image: Sequence[int], n_images: int, where: str) -> None:
    if len(tokens_per_image) != n_images:
        raise SampleError(f"{where}: {_plural(n_images, 'image')} but {len(tokens_per_image)} "
                          "entries in tokens_per_image")
    bad = [n for n in tokens_per_image if not (isinstance(n, tuple) and n) and (not isinstance(n, numbers.Integral)
                                                                              or n < 1)]
    if bad:
        raise SampleError(f"{where}: tokens_per_image must be positive integers, got {list(tokens_per_image)}")


def encode_sample(sample: Sample, tokenizer, template: ChatTemplate, *, image_tokens: ImageTokens,
                  tokens_per_image: Sequence[int], system_prompt: str | None = None) -> EncodedSample:
    """Token ids and labels of one training sample.

    Args:
        sample: the conversation; user turns hold one "<image>" per entry of ``sample.images``.
        tokenizer: a transformers tokenizer that knows the template's and the image tokens as special tokens.
        template: the chat format (``get_template(name)``).
        image_tokens: how an image is written in the ids (the model family's ``image_tokens``).
        tokens_per_image: context tokens of image k (tokens per tile x tiles for InternVL; 576 for LLaVA-1.5),
            or image k's whole run of ids (a family that marks each tile: DataPipeline.image_run).
        system_prompt: replaces the template's default system prompt; the sample's own system turn wins.

    Raises:
        SampleError: the message starts with ``sample.where`` and says what is wrong.
    """
    where = sample.where
    _check_turns(sample.turns, len(sample.images), where, need_assistant=True)
    _check_tokens_per_image(tokens_per_image, len(sample.images), where)
    pieces = _pieces(sample.turns, template, system_prompt, add_generation_prompt=False)
    return _encode(pieces, tokenizer, image_tokens, tokens_per_image, where)


def encode_prompt(turns: Sequence[Turn], tokenizer, template: ChatTemplate, *, image_tokens: ImageTokens,
                  tokens_per_image: Sequence[int], system_prompt: str | None = None,
                  where: str = "prompt") -> list[int]:
    """Ids for generation: the conversation so far plus the assistant header (the generation prompt).

    ``tokens_per_image`` has one entry per "<image>" placeholder in ``turns``; ``where`` prefixes errors.
    """
    n_images = len(tokens_per_image)
    _check_turns(turns, n_images, where, need_assistant=False)
    _check_tokens_per_image(tokens_per_image, n_images, where)
    pieces = _pieces(turns, template, system_prompt, add_generation_prompt=True)
    return _encode(pieces, tokenizer, image_tokens, tokens_per_image, where).input_ids
