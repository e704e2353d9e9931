"""AnyRes models (LLaVA-NeXT, LLaVA-OneVision), the model's side: the connector that holds the learned
`image_newline`, and the config fields that describe the grid. The grid itself (tiles, feature packing, token
count) is vlft.data.anyres_grid, which the data pipeline and the model share.
"""
from __future__ import annotations

import torch
from torch import nn

from vlft.model.connector import Connector


class AnyResConnector(Connector):
    """LLaVA's Linear -> GELU -> Linear plus the learned `image_newline` [D_text] that ends each feature row.

    The newline belongs to the connector (transformers keeps it beside the projector in the same model), so it
    trains with it, is saved in the trained tensors with it and gets the connector's learning rate."""

    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__(vision_hidden, text_hidden, downsample_ratio=1.0)
        self.image_newline = nn.Parameter(torch.zeros(text_hidden))


def with_image_newline(connector: Connector, image_newline: torch.Tensor) -> AnyResConnector:
    """The AnyRes connector holding a loaded connector's weights and the official model's `image_newline`."""
    anyres = AnyResConnector(connector.linear_1.in_features, connector.linear_2.out_features)
    anyres.to(device=connector.linear_1.weight.device, dtype=connector.linear_1.weight.dtype)
    anyres.load_state_dict({**connector.state_dict(), "image_newline": image_newline.detach()})
    return anyres


def anyres_fields(config) -> dict:
    """VLMInfo's AnyRes fields from a LLaVA-NeXT / OneVision config (none for a config without pinpoints)."""
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if not pinpoints:
        return {}
    aspect = getattr(config, "vision_aspect_ratio", None)  # OneVision: "anyres_max_9"
    budget = int(aspect.removeprefix("anyres_max_")) if isinstance(aspect, str) and aspect.startswith("anyres_max_") \
        else None
    return {"grid_pinpoints": tuple((int(h), int(w)) for h, w in pinpoints), "anyres_max_tiles": budget}
