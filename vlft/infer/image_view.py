"""What the model sees of a conversation's images: the tiles each was cut into and its number of image tokens.

The tiles are the pixels the vision encoder receives (`DataPipeline.pixels`, normalisation undone), split per
image by `DataPipeline.tile_counts`, so the view cannot drift from what chat and training feed the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlft.data.dataset import DataPipeline
from vlft.data.record import Sample
from vlft.data.tiling import _select_best_resolution, choose_grid, shared_tile_budget, split_grid

#: White gap between the tiles of a grid, in pixels, so the cut is visible.
GAP = 4


@dataclass(frozen=True)
class ImageView:
    """One image of the conversation as the model gets it."""

    path: str
    size: tuple[int, int]            # (width, height) of the file
    grid: tuple[int, int]            # (cols, rows) of the tile grid; (1, 1) for a single tile
    tiles: tuple[Image.Image, ...]   # every tile the encoder gets, in order
    #: "thumbnail" (InternVL, last tile), "global image" (split tiling, last), "base image" (LLaVA-NeXT, first)
    extra: str | None
    image_tokens: int                # tokens the image takes in the prompt

    @property
    def grid_image(self) -> Image.Image:
        """The grid tiles laid out as cut (row-major), GAP pixels apart."""
        tiles = self.grid_tiles
        cols, rows = self.grid
        side = tiles[0].width
        canvas = Image.new("RGB", (cols * side + (cols - 1) * GAP, rows * side + (rows - 1) * GAP), "white")
        for index, tile in enumerate(tiles):
            row, col = divmod(index, cols)
            canvas.paste(tile, (col * (side + GAP), row * (side + GAP)))
        return canvas

    @property
    def grid_tiles(self) -> tuple[Image.Image, ...]:
        if self.extra == "thumbnail":
            return self.tiles[:-1]
        if self.extra == "base image":
            return self.tiles[1:]
        return self.tiles

    @property
    def extra_tile(self) -> Image.Image | None:
        if self.extra in ("thumbnail", "global image"):
            return self.tiles[-1]
        if self.extra == "base image":
            return self.tiles[0]
        return None


def image_views(pipeline: DataPipeline, sample: Sample) -> list[ImageView]:
    """The view of every image of `sample`, with the tile budget the images share."""
    if not sample.images:
        return []
    counts = pipeline.tile_counts(sample)
    pixels = pipeline.pixels(sample)  # [sum(counts), 3, S, S]
    spec = pipeline.tiling
    budget = shared_tile_budget(sample.max_tiles or spec.max_tiles, len(sample.images))
    shown = pipeline.image_sizes(sample).tolist()  # (height, width) as shown: what the token count follows
    views, start = [], 0
    for path, count, (shown_h, shown_w) in zip(sample.images, counts, shown):
        tiles = tuple(to_image(tile, spec.mean, spec.std) for tile in pixels[start:start + count])
        start += count
        with Image.open(path) as image:
            size = image.size
        grid, extra = (1, 1), None
        if spec.mode == "dynamic":
            grid = choose_grid(*size, min_tiles=spec.min_tiles, max_tiles=budget, tile_size=spec.tile_size)
            extra = "thumbnail" if count > grid[0] * grid[1] else None
        elif spec.mode == "anyres":
            canvas_h, canvas_w = _select_best_resolution(*size, spec.grid_pinpoints)
            grid, extra = (canvas_w // spec.tile_size, canvas_h // spec.tile_size), "base image"
        elif spec.mode == "split":
            rows, cols = split_grid(shown_w, shown_h, spec)
            grid, extra = ((cols, rows), "global image") if rows else ((1, 1), None)
        views.append(ImageView(path, size, grid, tiles, extra, pipeline.tokens_for(shown_w, shown_h, count)))
    return views


def to_image(tile: torch.Tensor, mean, std) -> Image.Image:
    """A normalised tile [3, S, S] back to the RGB pixels it was made from."""
    values = tile.numpy() * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return Image.fromarray(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def describe(view: ImageView, index: int, pipeline: DataPipeline) -> str:
    """One line: size, how it was cut, tiles and image tokens."""
    spec = pipeline.tiling
    width, height = view.size
    n = len(view.tiles)
    if spec.mode == "dynamic":
        cols, rows = view.grid
        how = f"grid {cols}×{rows}" + (" + thumbnail" if view.extra else "")
    elif spec.mode == "anyres":
        how = f"base image + grid {view.grid[0]}×{view.grid[1]}"
    elif spec.mode == "split":
        how = f"grid {view.grid[0]}×{view.grid[1]} + global image" if view.extra else "one global tile"
    elif spec.mode == "pad_square":
        how = "padded to a square, one tile"
    else:
        how = "resized to one tile"
    tiles = f"{n} tile{'s' if n != 1 else ''}"
    return (f"image {index} ({width}×{height}): {how} = {tiles} × {pipeline.tokens_per_tile} tokens = "
            f"**{view.image_tokens} image tokens**")


def tiling_summary(pipeline: DataPipeline, n_images: int) -> str:
    """How this model cuts images (the settings a user tunes with data.tiling)."""
    spec = pipeline.tiling
    size = f"{spec.tile_size}×{spec.tile_size} px tiles"
    if spec.mode != "dynamic":
        return f"{spec.mode}, {size}"
    budget = shared_tile_budget(spec.max_tiles, max(1, n_images))
    shared = f", shared by {n_images} images: {budget} each" if n_images > 1 else ""
    thumbnail = ", thumbnail on" if spec.use_thumbnail else ""
    return f"dynamic, {size}, max_tiles {spec.max_tiles}{shared}{thumbnail}"
