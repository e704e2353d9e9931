"""Stream weights between the layouts tensor by tensor, so an export never holds the whole model.

The only tensors buffered are the parts of the fused tensor being assembled (one attention layer's q/k/v)
and, for a tied LM head, a reference to the embedding matrix. Every tensor is checked against the shape
the transformers class gives it, so a config that does not describe the weights fails before a reshape
scrambles them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor

from .config_map import canonical_native, chat_config_to_native, native_config_to_chat
from .errors import LayoutError
from .keys import (EMBED, IGNORED_CHAT_SUFFIXES, LM_HEAD, chat_key_to_native, fused_rule, native_shapes,
                   native_to_chat_slot)
from .llms import ChatLLM, llm_arch_of_chat_config, llm_entry
from .tensors import Heads, fresh


@dataclass(frozen=True)
class _Plan:
    """What the weight converters need to know about one model."""

    entry: ChatLLM
    shapes: Mapping[str, tuple[int, ...]]  # native key -> shape, from the transformers classes
    tied: bool  # the input may leave out the LM head; it is then copied from the embeddings
    heads: Heads

    @classmethod
    def of(cls, native: Mapping, llm_arch: str, tied: bool) -> _Plan:
        text = native["text_config"]
        heads = text["num_attention_heads"]
        return cls(entry=llm_entry(llm_arch), shapes=native_shapes(native), tied=tied,
                   heads=Heads(num_heads=heads, num_kv_heads=text.get("num_key_value_heads") or heads,
                               head_dim=text.get("head_dim") or text["hidden_size"] // heads))

    def check_shape(self, native_key: str, tensor: Tensor, source: str) -> None:
        expected = self.shapes[native_key]
        if tuple(tensor.shape) != expected:
            raise LayoutError(f"{source} has shape {tuple(tensor.shape)} where the config needs {expected}")

    def check_fused_rows(self, chat_key: str, natives: tuple[str, ...], tensor: Tensor) -> None:
        rows = sum(self.shapes[name][0] for name in natives)
        if tensor.shape[0] != rows:
            raise LayoutError(f"{chat_key!r} has {tensor.shape[0]} rows where the config needs {rows}")

    def check_complete(self, seen: set[str], *, chat_input: bool) -> None:
        """Raise naming the first absent input key (in the input's own layout)."""
        required = set(self.shapes) - {LM_HEAD} if self.tied else set(self.shapes)
        absent = sorted(required - seen)
        if absent:
            first = native_to_chat_slot(absent[0], self.entry.name)[0] if chat_input else absent[0]
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            layout = "InternVL-chat" if chat_input else "transformers-native InternVL"
            raise LayoutError(f"{layout} weights lack {first!r}{more}")


def _chat_plan(chat_config: Mapping) -> _Plan:
    llm_arch = llm_arch_of_chat_config(chat_config)
    # The id does not affect weights; nor does the pixel-shuffle order.
    native = canonical_native(chat_config_to_native(chat_config, image_token_id=0, allow_ps_v1=True))
    tied = bool((chat_config.get("llm_config") or {}).get("tie_word_embeddings", False))
    return _Plan.of(native, llm_arch, tied)


def _native_plan(hf_config: Mapping, llm_arch: str) -> _Plan:
    entry = llm_entry(llm_arch)
    native = canonical_native(hf_config)
    if native["text_config"]["model_type"] != entry.model_type:
        raise LayoutError(f"text_config.model_type={native['text_config']['model_type']!r} does not fit "
                          f"llm_arch={llm_arch!r} (needs {entry.model_type!r})")
    tied = bool(native.get("tie_word_embeddings") or native["text_config"].get("tie_word_embeddings"))
    return _Plan.of(native, llm_arch, tied)


def iter_chat_to_native(items: Iterable[tuple[str, Tensor]], chat_config: Mapping) -> Iterator[tuple[str, Tensor]]:
    """Stream InternVL-chat (key, tensor) pairs as native pairs. Fused tensors are split on the spot.

    A tied LM head (``llm_config.tie_word_embeddings``) is yielded as ``language_model.lm_head.weight``
    from the embeddings. Raises LayoutError on an unknown, duplicate, misshapen or missing key.
    """
    plan = _chat_plan(chat_config)
    seen: set[str] = set()
    embed: Tensor | None = None
    for key, tensor in items:
        if key.endswith(IGNORED_CHAT_SUFFIXES):
            continue
        names = chat_key_to_native(key, llm_arch=plan.entry.name)
        for name in names:
            if name not in plan.shapes:
                raise LayoutError(f"unknown key {key!r} in InternVL-chat weights: the config has no place for it")
            if name in seen:
                raise LayoutError(f"duplicate key {key!r} in InternVL-chat weights")
        if len(names) == 1:
            pieces: tuple[Tensor, ...] = (tensor,)
        else:
            plan.check_fused_rows(key, names, tensor)
            pieces = fused_rule(key, plan.entry).split(tensor, plan.heads)
        for name, piece in zip(names, pieces):
            plan.check_shape(name, piece, repr(key))
            seen.add(name)
            if name == EMBED:
                embed = piece
            yield name, piece
    if plan.tied and LM_HEAD not in seen and embed is not None:
        seen.add(LM_HEAD)
        yield LM_HEAD, fresh(embed)
    plan.check_complete(seen, chat_input=True)


def iter_native_to_chat(
    items: Iterable[tuple[str, Tensor]], hf_config: Mapping, *, llm_arch: str
) -> Iterator[tuple[str, Tensor]]:
    """Stream native (key, tensor) pairs as InternVL-chat pairs.

    The parts of a fused tensor (q/k/v of one attention layer) are buffered until all arrived, then fused
    by the rule of the layout (InternViT ``attn.qkv``; InternLM2 ``wqkv`` grouped per KV head). A tied
    model without ``lm_head`` gets ``output`` / ``lm_head`` from the embeddings. Raises LayoutError on an
    unknown, duplicate, misshapen or missing key.
    """
    plan = _native_plan(hf_config, llm_arch)
    seen: set[str] = set()
    pending: dict[str, dict[int, Tensor]] = {}  # chat key -> {slot: tensor}, one entry per layer in flight
    embed: Tensor | None = None
    for key, tensor in items:
        if key not in plan.shapes:
            raise LayoutError(
                f"unknown key {key!r} in transformers-native InternVL weights: the config has no place for it")
        if key in seen:
            raise LayoutError(f"duplicate key {key!r} in transformers-native InternVL weights")
        plan.check_shape(key, tensor, repr(key))
        seen.add(key)
        if key == EMBED and plan.tied and LM_HEAD not in seen:  # held only while the head may still be missing
            embed = tensor
        elif key == LM_HEAD:
            embed = None
        chat_key, slot = native_to_chat_slot(key, llm_arch)
        if slot is None:
            yield chat_key, tensor
            continue
        rule = fused_rule(chat_key, plan.entry)
        parts = pending.setdefault(chat_key, {})
        parts[slot] = tensor
        if len(parts) < len(rule.parts):
            continue
        del pending[chat_key]
        yield chat_key, rule.join([parts[i] for i in range(len(rule.parts))], plan.heads)
    if plan.tied and LM_HEAD not in seen and embed is not None:
        seen.add(LM_HEAD)
        yield native_to_chat_slot(LM_HEAD, llm_arch)[0], fresh(embed)
    plan.check_complete(seen, chat_input=False)


def internvl_chat_to_native(
    state: Mapping[str, Tensor], chat_config: Mapping, *, image_token_id: int, allow_ps_v1: bool = False
) -> tuple[dict[str, Tensor], dict]:
    """Original-layout weights + its config.json dict -> (native weights, ``InternVLConfig`` dict).

    ``InternVLForConditionalGeneration(InternVLConfig(**config))`` loads the weights with no missing or
    unexpected keys. ``image_token_id`` is the tokenizer's ``<IMG_CONTEXT>`` id. See
    :func:`~vlft.model.internvl_chat.config_map.chat_config_to_native` for ``allow_ps_v1``.
    """
    config = chat_config_to_native(chat_config, image_token_id=image_token_id, allow_ps_v1=allow_ps_v1)
    return dict(iter_chat_to_native(state.items(), chat_config)), config


def native_to_internvl_chat(
    state: Mapping[str, Tensor],
    hf_config: Mapping,
    *,
    llm_arch: str,
    training_fields: Mapping,
    base_config: Mapping | None = None,
) -> tuple[dict[str, Tensor], dict]:
    """Native weights + ``InternVLConfig`` dict -> (original-layout weights, InternVL-chat config.json dict).

    See :func:`~vlft.model.internvl_chat.config_map.native_config_to_chat` for the keyword arguments.
    """
    config = native_config_to_chat(hf_config, llm_arch=llm_arch, training_fields=training_fields,
                                   base_config=base_config)
    return dict(iter_native_to_chat(state.items(), hf_config, llm_arch=llm_arch)), config


def native_weight_names(hf_config: Mapping) -> list[str]:
    """Every key ``InternVLForConditionalGeneration.save_pretrained`` writes for this config (untied head)."""
    return list(native_shapes(canonical_native(hf_config)))
