"""AnyRes image features (LLaVA-NeXT, LLaVA-OneVision): the grid tiles' features unpadded back to the image's
aspect ratio, an `image_newline` after every row, the base image's features first.

Written from transformers' ``LlavaNextModel.pack_image_features`` / ``LlavaOnevisionModel.pack_image_features``
with transformers' own grid functions (``image_size_to_num_patches``, ``get_anyres_image_grid_shape``,
``unpad_image``), so the packing is theirs step for step. The token count of an image is the same packing run
on a meta tensor: the data pipeline (which counts) and the model (which packs) share this one rule.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.llava_next.modeling_llava_next import (get_anyres_image_grid_shape,
                                                                image_size_to_num_patches, unpad_image)


@dataclass(frozen=True)
class AnyResGrid:
    """What the packing needs from the config: its pinpoints, the tower's sizes, OneVision's feature budget."""

    grid_pinpoints: tuple[tuple[int, int], ...]  # (height, width) canvases, as image_grid_pinpoints
    tile_size: int
    patch_size: int
    #: OneVision's vision_aspect_ratio "anyres_max_N": unpadded grids larger than N tiles of features are
    #: shrunk (bilinear) to about N tiles; None for LLaVA-NeXT.
    max_tiles_of_features: int | None = None

    def tiles(self, image_size: tuple[int, int]) -> int:
        """Tiles of an image of (height, width): the base image + the best pinpoint's grid."""
        return image_size_to_num_patches(list(image_size), self._pinpoints(), self.tile_size)

    def _pinpoints(self) -> list[list[int]]:
        return [list(p) for p in self.grid_pinpoints]  # transformers insists on a list

    def pack_one(self, features: torch.Tensor, image_size: tuple[int, int], newline: torch.Tensor | None
                 ) -> torch.Tensor:
        """[tiles, side*side, D] of one image -> [tokens, D]: base tokens, then the unpadded grid row by row,
        each row closed by the newline (a single tile: its tokens + one newline)."""
        if features.shape[0] == 1:
            rest = () if newline is None else (newline[None].to(features),)
            return torch.cat((features[0], *rest), dim=0)
        base, grid = features[0], features[1:]
        side = self.tile_size // self.patch_size
        rows, cols = get_anyres_image_grid_shape(list(image_size), self._pinpoints(), self.tile_size)
        grid = grid.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
        grid = grid.flatten(1, 2).flatten(2, 3)  # [D, rows*side, cols*side]
        grid = unpad_image(grid, list(image_size))  # [D, h, w]: the padding rows/columns dropped
        if self.max_tiles_of_features is not None:
            channels, height, width = grid.shape
            ratio = math.sqrt(height * width / (self.max_tiles_of_features * side**2))
            if ratio > 1.1:
                grid = nn.functional.interpolate(grid[None], [int(height // ratio), int(width // ratio)],
                                                 mode="bilinear")[0]
        if newline is not None:
            grid = torch.cat((grid, newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)), dim=-1)
        return torch.cat((base, grid.flatten(1, 2).transpose(0, 1)), dim=0)  # [tokens, D]

    def pack(self, features: torch.Tensor, image_sizes: Sequence[tuple[int, int]], newline: torch.Tensor | None
             ) -> torch.Tensor:
        """[all tiles, side*side, D] of several images, in order -> [all tokens, D].

        Raises ValueError when the tiles are not those the image sizes give (the model turns it into one line).
        """
        counts = [self.tiles(tuple(size)) for size in image_sizes]
        if sum(counts) != features.shape[0]:
            raise ValueError(f"{features.shape[0]} tiles for {len(counts)} image(s) whose sizes give "
                             f"{sum(counts)} AnyRes tiles")
        return torch.cat([self.pack_one(part, tuple(size), newline)
                          for part, size in zip(features.split(counts), image_sizes)])

    def token_count(self, image_size: tuple[int, int], tokens_per_tile: int, newline: bool = True) -> int:
        """Image tokens of an image of (height, width): the packing run on shapes only (a meta tensor)."""
        features = torch.empty(self.tiles(image_size), tokens_per_tile, 1, device="meta")
        line = torch.empty(1, device="meta") if newline else None
        return int(self.pack_one(features, image_size, line).shape[0])
