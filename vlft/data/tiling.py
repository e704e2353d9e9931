"""Image -> normalised pixel tiles for the vision encoder (InternVL dynamic, LLaVA-1.5, LLaVA-NeXT, Idefics3 split).

Pure PIL/numpy/torch. Every mode reproduces the official preprocessing pixel for pixel: the grid choice
follows transformers' ``GotOcr2ImageProcessorPil`` / ``select_best_resolution``, resizing is PIL bicubic on
uint8 as they do, and normalisation uses the same float64 rescale then float32 arithmetic.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MODES = ("dynamic", "pad_square", "anyres", "resize", "split")
#: Idefics3 / SmolVLM processors: no side beyond this after the longest-edge resize (their MAX_IMAGE_SIZE).
SPLIT_MAX_SIDE = 4096


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded; the message names the path."""


class ImageNotFoundError(ImageError):
    """No file at the image's path (or a symlink to nothing)."""


def file_error(path: str | os.PathLike, err: OSError) -> ImageError:
    """The ImageError for an image file that the filesystem refuses (before any decoding), by its reason.

    A symlink loop and a dangling symlink are named as such: both read "not found" to os.path.exists.
    """
    path = os.fspath(path)
    if isinstance(err, FileNotFoundError) or err.errno == errno.ENOENT:
        if os.path.islink(path):
            return ImageNotFoundError(f"image not found: {path} is a symlink to {os.readlink(path)}, "
                                      "which does not exist")
        return ImageNotFoundError(f"image not found: {path}")
    if err.errno == errno.ELOOP:
        return ImageError(f"cannot read image {path}: symlink loop (a symlink that leads back to itself)")
    return ImageError(f"cannot read image {path}: {err.strerror or err}")


@dataclass(frozen=True)
class TilingSpec:
    """How one image becomes tiles.

    Example:
        >>> TilingSpec(mode="dynamic", tile_size=448, max_tiles=6).max_tiles
        6
    """

    mode: str = "dynamic"
    """"dynamic" (InternVL), "pad_square" (LLaVA-1.5), "anyres" (LLaVA-NeXT), "resize" (one plain tile) or
    "split" (Idefics3 / SmolVLM: longest-edge resize, tiles of tile_size, then the global image)."""
    tile_size: int = 448
    """Side of a square tile in pixels (InternVL 448, CLIP-336 LLaVA 336)."""
    min_tiles: int = 1
    """Fewest grid tiles for "dynamic" (InternVL min_dynamic_patch); the thumbnail is not counted."""
    max_tiles: int = 12
    """Most grid tiles for "dynamic" (InternVL max_dynamic_patch); the thumbnail is not counted."""
    use_thumbnail: bool = True
    """"dynamic" only: append the whole image as one extra tile when the grid has more than one tile."""
    grid_pinpoints: tuple[tuple[int, int], ...] = ()
    """"anyres" only: candidate canvases as (height, width), each a multiple of tile_size."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean in [0, 1]; also the pad colour for "pad_square"."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel std in [0, 1]."""
    longest_edge: int = 0
    """"split" only: the image's longest side is resized to this before splitting (the processor's
    size["longest_edge"]); 0 means 4 x tile_size, the processors' default."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TilingSpec.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not isinstance(self.tile_size, int) or self.tile_size <= 0:
            raise ValueError(f"TilingSpec.tile_size must be a positive integer; got {self.tile_size!r}")
        if not isinstance(self.min_tiles, int) or self.min_tiles < 1:
            raise ValueError(f"TilingSpec.min_tiles must be an integer >= 1; got {self.min_tiles!r}")
        if not isinstance(self.max_tiles, int) or self.max_tiles < self.min_tiles:
            raise ValueError(
                f"TilingSpec.max_tiles must be an integer >= min_tiles ({self.min_tiles}); got {self.max_tiles!r}"
            )
        # Configs are Python files that naturally write lists; tuples keep the frozen spec hashable.
        try:
            pinpoints = tuple((int(h), int(w)) for h, w in self.grid_pinpoints)
        except (TypeError, ValueError):
            raise ValueError(
                f"TilingSpec.grid_pinpoints must be (height, width) pairs; got {self.grid_pinpoints!r}"
            ) from None
        object.__setattr__(self, "grid_pinpoints", pinpoints)
        if self.mode == "anyres" and not pinpoints:
            raise ValueError(
                "TilingSpec.grid_pinpoints is required for mode='anyres', e.g. ((336, 672), (672, 336), (672, 672))"
            )
        for h, w in pinpoints:
            # A canvas that is not a whole number of tiles would leave partial tiles at its edges.
            if h <= 0 or w <= 0 or h % self.tile_size or w % self.tile_size:
                raise ValueError(
                    f"TilingSpec.grid_pinpoints entry ({h}, {w}) must be positive multiples of "
                    f"tile_size ({self.tile_size})"
                )
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                floats = tuple(float(v) for v in value)
            except TypeError:
                floats = ()
            if len(floats) != 3:
                raise ValueError(f"TilingSpec.{name} must be three floats (R, G, B); got {value!r}")
            object.__setattr__(self, name, floats)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"TilingSpec.std must be positive; got {self.std!r}")
        if not isinstance(self.longest_edge, int) or self.longest_edge < 0:
            raise ValueError(f"TilingSpec.longest_edge must be an integer >= 0; got {self.longest_edge!r}")
        if self.mode == "split" and not self.longest_edge:
            object.__setattr__(self, "longest_edge", 4 * self.tile_size)


@lru_cache(maxsize=64)
def _candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    # The order decides ties, so it is the reference's exactly: cols-major, rows-minor, then a stable
    # sort by tile count.
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= cols * rows <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, *, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """The InternVL tile grid (cols, rows) for an image of ``width`` x ``height`` pixels.

    Picks the grid with min_tiles <= cols * rows <= max_tiles whose aspect ratio is closest to the
    image's; on an exact tie the later (larger) grid wins only if the image area exceeds half the
    grid's pixel area. When no grid fits (min_tiles > max_tiles, as a shared budget can cause) the
    result is (1, 1), as in InternVL and transformers.

    Example:
        >>> choose_grid(896, 448, min_tiles=1, max_tiles=12, tile_size=448)
        (2, 1)
        >>> choose_grid(448, 448, min_tiles=1, max_tiles=12, tile_size=448)
        (1, 1)
        >>> choose_grid(2000, 2000, min_tiles=1, max_tiles=12, tile_size=448)
        (3, 3)
    """
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in _candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        # Equal-ratio grids are only worth their extra tiles when the image has the pixels to fill them.
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def _select_best_resolution(width: int, height: int, pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """LLaVA-NeXT's canvas choice: the (height, width) pinpoint that keeps the most of the image's
    pixels after an aspect-preserving fit, then wastes the least canvas.

    Example:
        >>> _select_best_resolution(800, 400, ((336, 672), (672, 336), (672, 672)))
        (336, 672)
    """
    best = pinpoints[0]
    best_effective, best_wasted = 0, float("inf")
    for canvas_h, canvas_w in pinpoints:
        scale = min(canvas_w / width, canvas_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = canvas_w * canvas_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (canvas_h, canvas_w), effective, wasted
    return best


def _fit_inside(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """(width, height) of the image scaled to fit the canvas, as transformers' get_patch_output_size.

    Example:
        >>> _fit_inside(800, 400, 672, 672)
        (672, 336)
    """
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return canvas_w, min(math.ceil(height * scale_w), canvas_h)
    return min(math.ceil(width * scale_h), canvas_w), canvas_h


def _split_resized_size(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """(width, height) after the Idefics3 processors' first resize: the longest side to ``longest_edge``, the
    other by the aspect ratio (truncated, then made even), then capped at SPLIT_MAX_SIDE.

    Example:
        >>> _split_resized_size(97, 33, 224)
        (224, 76)
    """
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > SPLIT_MAX_SIDE:
        width, height = SPLIT_MAX_SIDE, int(SPLIT_MAX_SIDE / aspect)
    elif height > width and height > SPLIT_MAX_SIDE:
        height, width = SPLIT_MAX_SIDE, int(SPLIT_MAX_SIDE * aspect)
    return max(width, 1), max(height, 1)


def _split_canvas_size(width: int, height: int, tile: int) -> tuple[int, int]:
    """(width, height) rounded up to whole tiles, the longer side first, as the processors'
    resize_for_vision_encoder (the shorter side is re-derived from the aspect ratio, then rounded up)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return width, height


def split_grid(width: int, height: int, spec: TilingSpec) -> tuple[int, int]:
    """(rows, cols) of the "split" tiles of an image of ``width`` x ``height``; (0, 0) when the image fits one
    tile (then it is the global image alone), as Idefics3Processor's rows / cols.

    Example:
        >>> spec = TilingSpec(mode="split", tile_size=56)
        >>> split_grid(97, 33, spec), split_grid(20, 20, spec), TilingSpec(mode="split", tile_size=56, longest_edge=56).longest_edge
        ((2, 4), (4, 4), 56)
    """
    canvas_w, canvas_h = _split_canvas_size(*_split_resized_size(width, height, spec.longest_edge), spec.tile_size)
    if canvas_w <= spec.tile_size and canvas_h <= spec.tile_size:
        return 0, 0
    return canvas_h // spec.tile_size, canvas_w // spec.tile_size


def _resolve_max(spec: TilingSpec, max_tiles: int | None) -> int:
    if max_tiles is None:
        return spec.max_tiles
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1; got {max_tiles}")
    return max_tiles


def num_tiles(width: int, height: int, spec: TilingSpec, max_tiles: int | None = None) -> int:
    """How many tiles ``tiles_for_image`` returns for an image of this size, without touching pixels.

    Counts the thumbnail ("dynamic") or base image ("anyres"). ``max_tiles`` overrides
    ``spec.max_tiles`` for "dynamic"; the other modes ignore it (see ``tiles_for_image``).

    Example:
        >>> num_tiles(896, 448, TilingSpec())
        3
        >>> num_tiles(896, 448, TilingSpec(), max_tiles=1)
        1
        >>> num_tiles(800, 400, TilingSpec(mode="anyres", tile_size=336, grid_pinpoints=((336, 672), (672, 672))))
        3
    """
    if spec.mode == "dynamic":
        cols, rows = choose_grid(
            width, height, min_tiles=spec.min_tiles, max_tiles=_resolve_max(spec, max_tiles), tile_size=spec.tile_size
        )
        grid = cols * rows
        return grid + 1 if spec.use_thumbnail and grid > 1 else grid
    if spec.mode == "anyres":
        canvas_h, canvas_w = _select_best_resolution(width, height, spec.grid_pinpoints)
        return 1 + (canvas_h // spec.tile_size) * (canvas_w // spec.tile_size)
    if spec.mode == "split":
        rows, cols = split_grid(width, height, spec)
        return rows * cols + 1 if rows else 1
    return 1


@lru_cache(maxsize=16)
def _level_table(mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """[3, 256] float32: the normalised value of every uint8 level in every channel.

    Built with transformers' own arithmetic (rescale in float64, cast to float32, then (x - mean) / std in
    float32), so a lookup gives its values bit for bit, while one gather per value replaces a float64
    upcast and three float32 passes over the image (``tools/bench/bench_preprocess.py``).

    Example:
        >>> table = _level_table((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        >>> table.shape, float(table[0, 0]), float(table[2, 255])
        ((3, 256), -1.0, 1.0)
    """
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)  # [256]
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]  # [3, 1]
    std32 = np.asarray(std, dtype=np.float32)[:, None]  # [3, 1]
    table = (levels[None, :] - mean32) / std32  # [3, 256]
    table.setflags(write=False)
    return table


def _normalize_into(pixels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """uint8 [H, W, 3] (a strided view is fine) -> ``out`` float32 [3, H, W], through the level table.

    Example:
        >>> out = np.empty((3, 1, 2), np.float32)
        >>> _normalize_into(np.zeros((1, 2, 3), np.uint8), _level_table((0.5,) * 3, (0.5,) * 3), out)
        >>> out.tolist()
        [[[-1.0, -1.0]], [[-1.0, -1.0]], [[-1.0, -1.0]]]
    """
    for channel in range(3):
        np.take(table[channel], pixels[..., channel], out=out[channel])


def _normalize(image: Image.Image, spec: TilingSpec) -> torch.Tensor:
    """uint8 RGB image -> float32 [3, H, W], /255 then (x - mean) / std.

    Same values as transformers' float64 rescale + float32 normalise, bit for bit (see ``_level_table``).

    Example:
        >>> _normalize(Image.new("RGB", (4, 2)), TilingSpec()).shape
        torch.Size([3, 2, 4])
    """
    pixels = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    _normalize_into(pixels, _level_table(spec.mean, spec.std), out)
    return torch.from_numpy(out)


def _normalized_tiles(canvas: Image.Image, spec: TilingSpec, *, lead: int = 0, trail: int = 0) -> np.ndarray:
    """Cut a canvas of whole tiles, normalising each tile straight into its slot of the result.

    [rows*t, cols*t] image -> float32 [lead + rows*cols + trail, 3, t, t], tiles row-major (left to right,
    then top to bottom); the ``lead`` first and ``trail`` last slots are left for the caller (the base
    image or the thumbnail). Filling slots in place saves a full-canvas float copy, the tile reshuffle
    and a concatenation.

    Example:
        >>> _normalized_tiles(Image.new("RGB", (6, 4)), TilingSpec(tile_size=2), trail=1).shape
        (7, 3, 2, 2)
    """
    size = spec.tile_size
    pixels = np.asarray(canvas, dtype=np.uint8)  # [rows*t, cols*t, 3]
    rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
    table = _level_table(spec.mean, spec.std)
    out = np.empty((lead + rows * cols + trail, 3, size, size), dtype=np.float32)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        tile = pixels[row * size:(row + 1) * size, col * size:(col + 1) * size]  # [t, t, 3] view
        _normalize_into(tile, table, out[lead + index])
    return out


def _normalize_resized_into(image: Image.Image, spec: TilingSpec, out: np.ndarray) -> None:
    """The whole image squashed to one tile, normalised into ``out`` [3, t, t] (thumbnail, base image).

    Example:
        >>> out = np.empty((3, 2, 2), np.float32)
        >>> _normalize_resized_into(Image.new("RGB", (8, 4), (255, 255, 255)), TilingSpec(tile_size=2), out)
        >>> bool((out == _level_table(IMAGENET_MEAN, IMAGENET_STD)[:, 255, None, None]).all())
        True
    """
    small = np.asarray(image.resize((spec.tile_size, spec.tile_size), Image.BICUBIC), dtype=np.uint8)  # [t, t, 3]
    _normalize_into(small, _level_table(spec.mean, spec.std), out)


def _pad_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square of ``color``, as LLaVA's expand2square.

    Example:
        >>> _pad_to_square(Image.new("RGB", (4, 2)), (1, 2, 3)).size
        (4, 4)
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), color)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def tiles_for_image(image: Image.Image, spec: TilingSpec, max_tiles: int | None = None) -> torch.Tensor:
    """Cut an image into normalised tiles: float32 [n_tiles, 3, tile_size, tile_size].

    - "dynamic": the ``choose_grid`` tiles row-major, then the thumbnail (whole image) LAST when the
      grid has more than one tile and ``spec.use_thumbnail``.
    - "pad_square": the image centred on a square of the mean colour, resized: one tile.
    - "anyres": the base image (whole image squashed to one tile) FIRST, then the tiles of the
      aspect-preserving fit into the best pinpoint, padded with black.
    - "resize": the image squashed to one tile.
    - "split": the longest side resized to ``spec.longest_edge``, the canvas rounded up to whole tiles, its
      tiles row-major, then the global image (the canvas squashed to one tile) LAST; a canvas of one tile is
      the global image alone. Every resize is LANCZOS, as the Idefics3 / SmolVLM image processors do.

    ``max_tiles`` overrides ``spec.max_tiles`` for "dynamic" (a per-dataset or shared budget).
    "anyres" and "split" ignore it: the model re-derives the grid from the image size and its own pinpoints, so
    a budget would desynchronise the two; pass fewer pinpoints instead.

    Example:
        >>> spec = TilingSpec(tile_size=28, max_tiles=6)
        >>> tiles_for_image(Image.new("RGB", (60, 30)), spec).shape
        torch.Size([3, 3, 28, 28])
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = spec.tile_size
    width, height = image.size

    if spec.mode == "dynamic":
        cols, rows = choose_grid(
            width, height, min_tiles=spec.min_tiles, max_tiles=_resolve_max(spec, max_tiles), tile_size=size
        )
        thumbnail = spec.use_thumbnail and cols * rows > 1
        # One resize for the whole grid, tiles cut from it, as the reference does.
        canvas = image.resize((size * cols, size * rows), Image.BICUBIC)
        tiles = _normalized_tiles(canvas, spec, trail=int(thumbnail))  # [rows*cols (+1), 3, t, t]
        if thumbnail:
            _normalize_resized_into(image, spec, tiles[-1])
        return torch.from_numpy(tiles)

    if spec.mode == "anyres":
        canvas_h, canvas_w = _select_best_resolution(width, height, spec.grid_pinpoints)
        fit_w, fit_h = _fit_inside(width, height, canvas_w, canvas_h)
        padded = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
        padded.paste(image.resize((fit_w, fit_h), Image.BICUBIC), ((canvas_w - fit_w) // 2, (canvas_h - fit_h) // 2))
        tiles = _normalized_tiles(padded, spec, lead=1)  # [1 + rows*cols, 3, t, t]
        _normalize_resized_into(image, spec, tiles[0])
        return torch.from_numpy(tiles)

    if spec.mode == "split":
        # LANCZOS on uint8 at every step, as the Idefics3 / SmolVLM image processors resize.
        image = image.resize(_split_resized_size(width, height, spec.longest_edge), Image.LANCZOS)
        image = image.resize(_split_canvas_size(*image.size, size), Image.LANCZOS)
        if image.width <= size and image.height <= size:
            return _normalize(image, spec)[None]  # [1, 3, t, t]: the global image alone
        tiles = _normalized_tiles(image, spec, trail=1)  # [rows*cols + 1, 3, t, t]
        _normalize_into(np.asarray(image.resize((size, size), Image.LANCZOS), dtype=np.uint8),
                        _level_table(spec.mean, spec.std), tiles[-1])
        return torch.from_numpy(tiles)

    if spec.mode == "pad_square":
        # int() truncates, as LLaVA and transformers do; rounding would shift the pad colour by one level.
        image = _pad_to_square(image, tuple(int(m * 255) for m in spec.mean))
    return _normalize(image.resize((size, size), Image.BICUBIC), spec)[None]  # [1, 3, t, t]


def shared_tile_budget(max_tiles: int, num_images: int) -> int:
    """Per-image tile budget when ``num_images`` images share one sample, as InternVL does.

    Example:
        >>> shared_tile_budget(12, 1), shared_tile_budget(12, 5), shared_tile_budget(12, 20)
        (12, 2, 1)
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}")
    return max(1, max_tiles // num_images)


#: EXIF Orientation (tag 0x0112) -> the transpose that shows the image upright, as Pillow's ImageOps.exif_transpose.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, without decoding pixels."""

    width: int        # as shown, i.e. after the EXIF rotation (what load_image returns and tiling sees)
    height: int
    orientation: int  # the EXIF Orientation tag, 1 (upright) when absent; 2-8 rotate or mirror

    @property
    def rotated(self) -> bool:
        return self.orientation in _UPRIGHT


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block: Pillow raises several types; the pixels are still fine
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def read_image_header(path: str | os.PathLike) -> ImageHeader:
    """The displayed size and EXIF orientation of an image file, from its header only (fast, no decode).

    Example:
        >>> read_image_header("/no/such.jpg")
        Traceback (most recent call last):
        ...
        vlft.data.tiling.ImageNotFoundError: image not found: /no/such.jpg
    """
    try:
        file = open(path, "rb")
    except OSError as err:
        raise file_error(path, err) from None
    try:
        with file, Image.open(file) as image:
            (width, height), orientation = image.size, _orientation(image)
    except Exception as err:  # PIL raises several types for a file that is not an image
        raise ImageError(f"cannot read image {os.fspath(path)}: {err}") from None
    if orientation >= 5:  # 5-8 swap the sides
        width, height = height, width
    return ImageHeader(width, height, orientation)


def _sixteen_to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey ("I;16", or "I" holding 0..65535 as Pillow reads 16-bit PNGs) -> 8-bit "L", v * 255 / 65535
    rounded. Pillow's own convert() clips at 255 instead, which turns nearly every such image white."""
    levels = np.asarray(image).astype(np.int64).clip(0, 65535)  # [H, W]
    return Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as upright 8-bit RGB, as serving code sees it.

    - 16-bit grey is scaled to 8 bit (not clipped white);
    - the EXIF orientation is applied, as transformers' ``load_image`` (what a processor given a path or URL
      uses), vLLM and every image viewer do, so training sees what chat, eval and serving see;
    - transparency (an alpha band or a palette/grey transparent colour) is composited onto white, as
      transformers' ``convert_to_rgb`` (``do_convert_rgb=True`` in the exported processor) does;
    - CMYK, palette and grey without transparency go through Pillow's ``convert("RGB")``, as there.

    Example:
        >>> to_rgb(Image.new("LA", (2, 1), (0, 0))).getpixel((0, 0))
        (255, 255, 255)
    """
    orientation = _orientation(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bit(image)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as upright 8-bit RGB (see ``to_rgb``), fully decoded, so a bad file fails here with
    its path.

    Example:
        >>> load_image("/no/such.jpg")
        Traceback (most recent call last):
        ...
        vlft.data.tiling.ImageNotFoundError: image not found: /no/such.jpg
    """
    try:
        file = open(path, "rb")
    except OSError as err:
        raise file_error(path, err) from None
    try:
        with file, Image.open(file) as image:
            # load() forces the decode that Image.open defers, so truncated files fail here too.
            # (ImageFile.LOAD_TRUNCATED_IMAGES stays False: half an image is never trained on.)
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(
            f"cannot read image {os.fspath(path)}: {err} (re-encode it, or drop the sample)"
        ) from err
