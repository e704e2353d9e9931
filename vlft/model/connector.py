"""The connector between vision encoder and LLM: InternVL's pixel shuffle + MLP, or LLaVA's MLP."""
from __future__ import annotations

import torch
from torch import nn


PS_VERSIONS = ("v1", "v2")


def pixel_shuffle(features: torch.Tensor, ratio: float = 0.5, version: str = "v2") -> torch.Tensor:
    """Fold each (1/ratio x 1/ratio) block of patches into one token, in InternVL's "v2" or "v1" order.

    [B, W, H, C] -> [B, W*ratio, H*ratio, C/ratio²]; InternVL keeps the axes in (w, h) order and swaps
    them back at the end, which fixes where each patch's channels land (the weights depend on it).
    "v1" (InternVL-Chat-V1-5, ``ps_version='v1'``) skips that last swap: each token holds the same
    channels, but the token grid comes out transposed, [B, H*ratio, W*ratio, C/ratio²]. transformers'
    InternVL implements "v2" only.

    >>> pixel_shuffle(torch.zeros(2, 32, 32, 8)).shape
    torch.Size([2, 16, 16, 32])
    """
    if version not in PS_VERSIONS:
        raise ValueError(f"ps_version={version!r}: expected one of {', '.join(PS_VERSIONS)}")
    batch, width, height, channels = features.shape
    if (width * ratio) % 1 or (height * ratio) % 1:
        raise ValueError(f"a {width}x{height} patch grid cannot be pixel-shuffled by {ratio}")
    features = features.reshape(batch, width, int(height * ratio), int(channels / ratio))
    features = features.permute(0, 2, 1, 3).contiguous()  # [B, H*r, W, C/r]
    features = features.reshape(batch, int(height * ratio), int(width * ratio), int(channels / ratio**2))
    if version == "v1":
        return features  # [B, H*r, W*r, C/r²]
    return features.permute(0, 2, 1, 3).contiguous()  # [B, W*r, H*r, C/r²]


class Connector(nn.Module):
    """Patch features -> LLM embeddings.

    InternVL (downsample_ratio < 1): pixel shuffle (in the ``ps_version`` order), then
    LayerNorm(4·Dv) -> Linear -> GELU -> Linear.
    LLaVA (downsample_ratio == 1): Linear -> GELU -> Linear.
    Submodule names follow transformers' `multi_modal_projector` so weights map one to one.
    """

    def __init__(self, vision_hidden: int, text_hidden: int, downsample_ratio: float = 0.5,
                 layer_norm_eps: float = 1e-5, ps_version: str = "v2"):
        super().__init__()
        if ps_version not in PS_VERSIONS:
            raise ValueError(f"ps_version={ps_version!r}: expected one of {', '.join(PS_VERSIONS)}")
        self.downsample_ratio = downsample_ratio
        self.ps_version = ps_version
        in_features = vision_hidden * int(round(1 / downsample_ratio)) ** 2
        self.layer_norm = nn.LayerNorm(in_features, eps=layer_norm_eps) if downsample_ratio < 1 else None
        self.linear_1 = nn.Linear(in_features, text_hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        # patch_features: [tiles, patches, Dv] (CLS already dropped)
        if self.downsample_ratio < 1:
            tiles, patches, dim = patch_features.shape
            side = int(patches**0.5)
            grid = pixel_shuffle(patch_features.reshape(tiles, side, side, dim), self.downsample_ratio,
                                 self.ps_version)
            patch_features = self.layer_norm(grid.reshape(tiles, -1, grid.shape[-1]))  # [tiles, tokens, 4·Dv]
        return self.linear_2(self.act(self.linear_1(patch_features)))  # [tiles, tokens, Dt]
