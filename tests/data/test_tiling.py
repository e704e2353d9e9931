"""vlft.data.tiling against the official preprocessing in transformers (PIL backends, no torchvision)."""

import doctest
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlft.data import tiling
from vlft.data.tiling import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    TilingSpec,
    choose_grid,
    load_image,
    num_tiles,
    shared_tile_budget,
    tiles_for_image,
)

got_ocr2 = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")
from transformers import GotOcr2ImageProcessorPil, LlavaImageProcessorPil, LlavaNextImageProcessorPil  # noqa: E402
from transformers.image_processing_utils import select_best_resolution  # noqa: E402

# Both sides resize uint8 with PIL bicubic and normalise with float64 rescale + float32 arithmetic,
# so the pixels are expected to agree to float32 rounding; this bound leaves room for nothing more.
PIXEL_ATOL = 1e-6

BUDGETS = [(1, 6), (1, 12), (2, 8), (1, 1), (4, 4)]
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def _sweep_sizes() -> list[tuple[int, int]]:
    extremes = [
        (1, 2000), (2000, 1), (3000, 7), (7, 3000), (448, 448), (10, 10), (1, 1), (2, 1), (1, 2),
        (896, 448), (448, 896), (1344, 448), (500, 400), (400, 500), (85, 34), (470, 188), (855, 342),
        (224, 224), (225, 224), (1920, 1080), (1080, 1920), (4000, 3000), (640, 480), (300, 7000),
    ]
    rng = random.Random(0)
    randoms = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(250)]
    # Aspect ratios exactly halfway between two grids: the tie-break path.
    ties = [(w * k, h * k) for w, h in [(5, 4), (4, 5), (5, 2), (2, 5), (3, 2), (5, 3)] for k in (1, 20, 90, 300)]
    return extremes + randoms + ties


SIZES = _sweep_sizes()


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    # Half noise, half smooth gradient: noise stresses the resampler, gradients the edges.
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    pixels = np.where(rng.random((height, width, 1)) < 0.5, noise, ramp.astype(np.uint8))
    return Image.fromarray(pixels, "RGB")


def _max_diff(ours: torch.Tensor, theirs) -> float:
    theirs = torch.as_tensor(np.asarray(theirs))
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item()


# --- dynamic (InternVL) ---------------------------------------------------------------------------


@pytest.mark.parametrize(("min_tiles", "max_tiles"), BUDGETS)
@pytest.mark.parametrize("tile_size", [28, 448])
def test_choose_grid_matches_got_ocr2_grid(min_tiles, max_tiles, tile_size):
    for width, height in SIZES:
        expected = got_ocr2.get_optimal_tiled_canvas((height, width), (tile_size, tile_size), min_tiles, max_tiles)
        got = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
        assert got == expected, (width, height)


@pytest.mark.parametrize(("min_tiles", "max_tiles"), BUDGETS + [(4, 2)])
def test_num_tiles_matches_got_ocr2_patch_count(min_tiles, max_tiles):
    # The processor's own public count, independent of the grid helper (it always adds the thumbnail).
    processor = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=min_tiles, max_patches=max_tiles)
    # (4, 2) is a shared budget below min_tiles: no candidate grid, so one tile, as the reference.
    spec = TilingSpec(tile_size=processor.size.height, min_tiles=min_tiles, max_tiles=max(min_tiles, max_tiles))
    for width, height in SIZES:
        expected = processor.get_number_of_image_patches(height, width)
        assert num_tiles(width, height, spec, max_tiles=max_tiles) == expected, (width, height)


PIXEL_CASES = [
    # (width, height, min_tiles, max_tiles, tile_size)
    (60, 30, 1, 6, 28),
    (30, 60, 1, 6, 28),
    (100, 100, 1, 12, 28),
    (13, 9, 1, 12, 28),
    (200, 50, 2, 8, 28),
    (7, 300, 1, 12, 28),
    (300, 3, 1, 6, 28),
    (80, 64, 4, 4, 28),
    (57, 41, 1, 1, 28),
    (500, 400, 1, 12, 56),
    (1000, 700, 1, 12, 448),
    (448, 448, 1, 12, 448),
]


@pytest.mark.parametrize(("width", "height", "min_tiles", "max_tiles", "tile_size"), PIXEL_CASES)
def test_dynamic_pixels_match_got_ocr2(width, height, min_tiles, max_tiles, tile_size):
    image = _random_image(width, height, seed=width * 7919 + height)
    processor = GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=min_tiles,
        max_patches=max_tiles,
        size={"height": tile_size, "width": tile_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    expected = processor(image, return_tensors="np")
    spec = TilingSpec(tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    ours = tiles_for_image(image, spec)
    assert ours.dtype == torch.float32
    assert ours.shape[0] == int(expected["num_patches"][0])
    assert _max_diff(ours, expected["pixel_values"]) <= PIXEL_ATOL


def test_dynamic_thumbnail_is_last_and_grid_is_row_major():
    # Four flat quadrants: a 2x2 grid must come back top-left, top-right, bottom-left, bottom-right.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    image = Image.new("RGB", (56, 56))
    for index, colour in enumerate(colours):
        image.paste(colour, ((index % 2) * 28, (index // 2) * 28, (index % 2 + 1) * 28, (index // 2 + 1) * 28))
    spec = TilingSpec(tile_size=28, min_tiles=4, max_tiles=4, mean=(0, 0, 0), std=(1, 1, 1))
    tiles = tiles_for_image(image, spec)  # [5, 3, 28, 28]
    assert tiles.shape == (5, 3, 28, 28)
    for index, colour in enumerate(colours):
        centre = tiles[index, :, 14, 14]
        assert torch.allclose(centre, torch.tensor(colour, dtype=torch.float32) / 255)
    thumbnail = tiles[4]
    assert torch.allclose(thumbnail[:, 3, 3], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(thumbnail[:, 24, 24], torch.tensor([1.0, 1, 1]))

    no_thumb = tiles_for_image(image, TilingSpec(tile_size=28, min_tiles=4, max_tiles=4, use_thumbnail=False))
    assert no_thumb.shape == (4, 3, 28, 28)


def test_max_tiles_override_and_grayscale_input():
    image = Image.new("L", (280, 28), 128)  # 10:1, non-RGB on purpose
    spec = TilingSpec(tile_size=28, max_tiles=12)
    assert tiles_for_image(image, spec).shape == (11, 3, 28, 28)
    assert tiles_for_image(image, spec, max_tiles=3).shape == (4, 3, 28, 28)
    assert tiles_for_image(image, spec, max_tiles=1).shape == (1, 3, 28, 28)
    with pytest.raises(ValueError, match="max_tiles"):
        tiles_for_image(image, spec, max_tiles=0)


def test_resize_mode_matches_plain_got_ocr2_resize():
    image = _random_image(90, 37, seed=3)
    processor = GotOcr2ImageProcessorPil(crop_to_patches=False, size={"height": 28, "width": 28})
    expected = processor(image, return_tensors="np")["pixel_values"]
    ours = tiles_for_image(image, TilingSpec(mode="resize", tile_size=28, mean=CLIP_MEAN, std=CLIP_STD))
    assert ours.shape == (1, 3, 28, 28)
    assert _max_diff(ours, expected) <= PIXEL_ATOL


# --- pad_square (LLaVA-1.5) -----------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(50, 20), (20, 50), (33, 33), (41, 40), (3, 90), (90, 3)])
def test_pad_square_matches_llava(width, height):
    image = _random_image(width, height, seed=width + 1000 * height)
    processor = LlavaImageProcessorPil(
        do_pad=True, size={"height": 28, "width": 28}, do_center_crop=False, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    expected = processor(image, return_tensors="np")["pixel_values"]
    ours = tiles_for_image(image, TilingSpec(mode="pad_square", tile_size=28, mean=CLIP_MEAN, std=CLIP_STD))
    assert ours.shape == (1, 3, 28, 28)
    assert _max_diff(ours, expected) <= PIXEL_ATOL


def test_pad_square_corner_is_mean_colour():
    spec = TilingSpec(mode="pad_square", tile_size=28, mean=CLIP_MEAN, std=CLIP_STD)
    tile = tiles_for_image(Image.new("RGB", (100, 10), (255, 255, 255)), spec)[0]
    pad = torch.tensor([int(m * 255) / 255 for m in CLIP_MEAN])
    expected = (pad - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(tile[:, 0, 0], expected, atol=1e-6)
    assert torch.allclose(tile[:, 14, 14], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD), atol=1e-6)


# --- anyres (LLaVA-NeXT) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pinpoints", "tile_size"),
    [(LLAVA_NEXT_PINPOINTS, 336), (((28, 56), (56, 28), (56, 56), (84, 28), (28, 84)), 28)],
)
def test_anyres_resolution_matches_select_best_resolution(pinpoints, tile_size):
    spec = TilingSpec(mode="anyres", tile_size=tile_size, grid_pinpoints=pinpoints)
    for width, height in SIZES:
        best_h, best_w = select_best_resolution((height, width), [list(p) for p in pinpoints])
        assert tiling._select_best_resolution(width, height, pinpoints) == (best_h, best_w), (width, height)
        assert num_tiles(width, height, spec) == 1 + (best_h // tile_size) * (best_w // tile_size)


ANYRES_SMALL = ((28, 56), (56, 28), (56, 56), (84, 28), (28, 84))


@pytest.mark.parametrize(("width", "height"), [(60, 30), (30, 60), (50, 50), (100, 20), (20, 100), (9, 13)])
def test_anyres_pixels_match_llava_next(width, height):
    image = _random_image(width, height, seed=width * 31 + height)
    processor = LlavaNextImageProcessorPil(
        size={"height": 28, "width": 28},
        crop_size={"height": 28, "width": 28},
        do_center_crop=False,
        image_grid_pinpoints=[list(p) for p in ANYRES_SMALL],
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    expected = processor(image, return_tensors="np")["pixel_values"][0]  # [1 + n, 3, 28, 28], base first
    spec = TilingSpec(mode="anyres", tile_size=28, grid_pinpoints=ANYRES_SMALL, mean=CLIP_MEAN, std=CLIP_STD)
    ours = tiles_for_image(image, spec)
    assert ours.shape[0] == num_tiles(width, height, spec)
    assert _max_diff(ours, expected) <= PIXEL_ATOL


# --- counts, budgets, spec ------------------------------------------------------------------------


SPECS = [
    TilingSpec(tile_size=14, max_tiles=6),
    TilingSpec(tile_size=14, min_tiles=2, max_tiles=8, use_thumbnail=False),
    TilingSpec(mode="pad_square", tile_size=14),
    TilingSpec(mode="resize", tile_size=14),
    TilingSpec(mode="anyres", tile_size=14, grid_pinpoints=((14, 28), (28, 14), (28, 28), (42, 14), (14, 42))),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.mode)
def test_num_tiles_equals_tiles_for_image(spec):
    for width, height in SIZES[:24] + SIZES[-24:]:
        tiles = tiles_for_image(Image.new("RGB", (width, height)), spec)
        assert tiles.shape == (num_tiles(width, height, spec), 3, 14, 14), (width, height)
        for budget in (1, 3):
            n = tiles_for_image(Image.new("RGB", (width, height)), spec, max_tiles=budget).shape[0]
            assert n == num_tiles(width, height, spec, max_tiles=budget)


def test_shared_tile_budget():
    assert [shared_tile_budget(12, n) for n in (1, 2, 3, 4, 5, 6, 12, 13, 100)] == [12, 6, 4, 3, 2, 2, 1, 1, 1]
    assert shared_tile_budget(6, 4) == 1
    with pytest.raises(ValueError, match="num_images"):
        shared_tile_budget(12, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "tiles"}, "mode"),
        ({"tile_size": 0}, "tile_size"),
        ({"min_tiles": 0}, "min_tiles"),
        ({"min_tiles": 6, "max_tiles": 4}, "max_tiles"),
        ({"mode": "anyres"}, "grid_pinpoints"),
        ({"mode": "anyres", "tile_size": 336, "grid_pinpoints": ((336, 500),)}, "grid_pinpoints"),
        ({"grid_pinpoints": (336,)}, "grid_pinpoints"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TilingSpec\.{field}"):
        TilingSpec(**kwargs)


def test_spec_accepts_lists_from_configs_and_stays_hashable():
    spec = TilingSpec(mode="anyres", tile_size=336, grid_pinpoints=[[336, 672], [672, 672]], mean=[0.5, 0.5, 0.5])
    assert spec.grid_pinpoints == ((336, 672), (672, 672))
    assert spec.mean == (0.5, 0.5, 0.5)
    assert hash(spec) == hash(TilingSpec(mode="anyres", tile_size=336, grid_pinpoints=((336, 672), (672, 672)),
                                         mean=(0.5, 0.5, 0.5)))


# --- loading --------------------------------------------------------------------------------------


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("LA", (5, 4), (100, 255)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 4)


def test_load_image_missing_names_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_image_corrupt_names_path(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\x00garbage, not an image" * 10)
    with pytest.raises(ImageError) as info:
        load_image(str(path))
    assert str(path) in str(info.value)


def test_load_image_truncated_names_path(tmp_path):
    path = tmp_path / "cut.jpg"
    _random_image(64, 64, seed=1).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_docstring_examples():
    result = doctest.testmod(tiling, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
