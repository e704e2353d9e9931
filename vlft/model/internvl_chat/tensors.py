"""Fused tensors of the InternVL-chat layout and how they split into transformers' separate ones.

Every returned tensor owns fresh contiguous storage (safetensors refuses views that share memory).

Format facts (checked against the sources):

- InternViT ``attn.qkv`` rows are ``q | k | v`` (``qkv.reshape(B, N, 3, H, Dh)`` in
  ``modeling_intern_vit.py``; transformers' ``convert_internvl_weights_to_hf.py`` slices ``[:D]``,
  ``[D:2D]``, ``[-D:]``).
- InternLM2 ``wqkv`` rows are grouped per KV head: ``rearrange(qkv, 'b q (h gs d) -> b q h gs d',
  gs=2 + num_key_value_groups)``; the first ``num_key_value_groups`` slots are that group's query heads,
  then one key head, then one value head (``modeling_internlm2.py``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import LayoutError


@dataclass(frozen=True)
class Heads:
    """The LLM's attention shape, which a grouped ``wqkv`` needs to be split."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class FusedRule:
    """One chat tensor that holds several native ones (per layer, e.g. ``attn.qkv`` -> q/k/v_proj).

    ``parts`` are the native suffixes in slot order; ``split``/``join`` convert between the two forms.
    """

    parts: tuple[str, ...]
    split: Callable[[Tensor, Heads], tuple[Tensor, ...]]
    join: Callable[[Sequence[Tensor], Heads], Tensor]


def fresh(t: Tensor) -> Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def split_vision_qkv(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """InternViT ``attn.qkv`` [3*D, ...] -> q, k, v [D, ...]; the rows are q | k | v."""
    if qkv.shape[0] % 3:
        raise LayoutError(f"fused qkv has {qkv.shape[0]} rows, not a multiple of 3")
    q, k, v = qkv.chunk(3, dim=0)
    return fresh(q), fresh(k), fresh(v)


def fuse_vision_qkv(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q, k, v [D, ...] -> InternViT ``attn.qkv`` [3*D, ...]."""
    return torch.cat([q, k, v], dim=0)


def ungroup_wqkv(
    wqkv: Tensor, *, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """InternLM2 ``wqkv`` [(H + 2*KV)*Dh, ...] -> q [H*Dh, ...], k [KV*Dh, ...], v [KV*Dh, ...].

    Rows are grouped per KV head: [q heads of group 0, k_0, v_0, q heads of group 1, k_1, v_1, ...].
    Works for the weight [rows, in] and the bias [rows].
    """
    groups = num_heads // num_kv_heads
    rest = wqkv.shape[1:]
    grouped = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *rest)  # [KV, G+2, Dh, ...]
    q = grouped[:, :groups].reshape(num_heads * head_dim, *rest)
    k = grouped[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = grouped[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return fresh(q), fresh(k), fresh(v)


def group_wqkv(q: Tensor, k: Tensor, v: Tensor, *, num_heads: int, num_kv_heads: int, head_dim: int) -> Tensor:
    """Inverse of :func:`ungroup_wqkv`: q, k, v -> InternLM2 ``wqkv`` grouped per KV head."""
    groups = num_heads // num_kv_heads
    rest = q.shape[1:]
    parts = [
        q.reshape(num_kv_heads, groups, head_dim, *rest),  # [KV, G, Dh, ...]
        k.reshape(num_kv_heads, 1, head_dim, *rest),
        v.reshape(num_kv_heads, 1, head_dim, *rest),
    ]
    return torch.cat(parts, dim=1).reshape((num_heads + 2 * num_kv_heads) * head_dim, *rest)


def _qkv_parts(param: str) -> tuple[str, ...]:
    return tuple(f"{n}_proj.{param}" for n in "qkv")


def vision_qkv_rule(prefix: str, param: str) -> FusedRule:
    """InternViT's ``attn.qkv.<param>`` -> ``<prefix>{q,k,v}_proj.<param>``."""
    return FusedRule(parts=tuple(prefix + p for p in _qkv_parts(param)),
                     split=lambda t, heads: split_vision_qkv(t),
                     join=lambda parts, heads: fuse_vision_qkv(*parts))


def grouped_qkv_rule(prefix: str, param: str) -> FusedRule:
    """InternLM2's ``attention.wqkv.<param>`` (grouped per KV head) -> ``<prefix>{q,k,v}_proj.<param>``."""
    return FusedRule(parts=tuple(prefix + p for p in _qkv_parts(param)),
                     split=lambda t, h: ungroup_wqkv(t, num_heads=h.num_heads, num_kv_heads=h.num_kv_heads,
                                                     head_dim=h.head_dim),
                     join=lambda parts, h: group_wqkv(*parts, num_heads=h.num_heads, num_kv_heads=h.num_kv_heads,
                                                      head_dim=h.head_dim))
