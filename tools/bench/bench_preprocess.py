"""Preprocessing throughput: vlft's `tiles_for_image` against transformers' `GotOcr2ImageProcessorPil`.

Both sides get the same decoded images (synthetic photo-like JPEGs of mixed sizes and aspect ratios,
decoded once by `vlft.data.tiling.load_image`) and do the same job: choose the InternVL grid, resize with
PIL bicubic, cut 448 px tiles, add the thumbnail, normalise to float32 [tiles, 3, 448, 448]. Each image is
timed on both sides back to back (the order alternates), so machine noise hits both alike; the ratio is
the figure to read. Every result is checked: same tile count and bit-identical pixels.

    python tools/bench/bench_preprocess.py                 # 200 images, max 6 and max 12 tiles
    python tools/bench/bench_preprocess.py --images 50     # quicker

"PIL resize" is the time of the two PIL bicubic resizes alone (grid canvas + thumbnail): work both sides
must do to stay pixel-exact, so it bounds any speed-up.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(out_dir: Path, count: int, seed: int) -> list[Path]:
    """`count` photo-like JPEGs, sides 300-2000 px: smooth colour fields + a gradient + grain."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(300, 2001, size=2))
        # A coarse random field upsampled gives photo-like blobs; gradient and grain give edges and texture.
        coarse = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
        field = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.float32)  # [H, W, 3]
        ramp = np.linspace(-40, 40, width, dtype=np.float32)[None, :, None]  # [1, W, 1]
        grain = rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)  # [H, W, 1]
        pixels = np.clip(field + ramp + grain, 0, 255).astype(np.uint8)
        path = out_dir / f"img_{index:04d}.jpg"
        Image.fromarray(pixels, "RGB").save(path, quality=90)
        paths.append(path)
    return paths


def run(paths: list[Path], max_tiles: int, tile: int) -> dict:
    from transformers import GotOcr2ImageProcessorPil

    from vlft.data.tiling import IMAGENET_MEAN, IMAGENET_STD, TilingSpec, choose_grid, load_image, tiles_for_image

    spec = TilingSpec(mode="dynamic", tile_size=tile, min_tiles=1, max_tiles=max_tiles, use_thumbnail=True)
    processor = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=max_tiles,
                                         size={"height": tile, "width": tile},
                                         image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

    def ours(image):
        return tiles_for_image(image, spec)

    def theirs(image):
        return processor(image, return_tensors="pt")["pixel_values"]

    def resize_only(image):
        cols, rows = choose_grid(*image.size, min_tiles=1, max_tiles=max_tiles, tile_size=tile)
        image.resize((tile * cols, tile * rows), Image.BICUBIC)
        if cols * rows > 1:
            image.resize((tile, tile), Image.BICUBIC)

    seconds = {"decode": 0.0, "vlft": 0.0, "transformers": 0.0, "resize": 0.0}
    tiles = mismatched_grids = inexact = 0
    worst = 0.0
    for index, path in enumerate(paths):
        start = time.perf_counter()
        image = load_image(path)
        seconds["decode"] += time.perf_counter() - start
        order = [("vlft", ours), ("transformers", theirs)]
        if index % 2:
            order.reverse()
        results = {}
        for name, fn in order + [("resize", resize_only)]:
            start = time.perf_counter()
            results[name] = fn(image)
            seconds[name] += time.perf_counter() - start
        a, b = results["vlft"], results["transformers"]
        tiles += a.shape[0]
        if a.shape != b.shape:
            mismatched_grids += 1
            continue
        if not torch.equal(a, b):
            inexact += 1
            worst = max(worst, (a - b).abs().max().item())
    return dict(max_tiles=max_tiles, images=len(paths), tiles=tiles, seconds=seconds,
                mismatched_grids=mismatched_grids, inexact=inexact, worst=worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="how many synthetic images (default 200)")
    parser.add_argument("--max-tiles", type=int, nargs="+", default=[6, 12], help="budgets to run (default 6 12)")
    parser.add_argument("--tile", type=int, default=448, help="tile side in pixels (default 448)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)  # both sides are single-threaded PIL/numpy; keep torch from adding threads
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.images} images 300-2000 px, tile {args.tile}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = make_images(Path(tmp), args.images, args.seed)
        print(f"# made {len(paths)} JPEGs in {time.perf_counter() - start:.1f}s")
        rows = [run(paths, m, args.tile) for m in args.max_tiles]

    header = (f"{'max':>4} {'tiles':>6} | {'vlft img/s':>10} {'hf img/s':>9} {'ratio':>6} | "
              f"{'+decode ratio':>13} | {'PIL resize % of vlft':>20} | check")
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row["seconds"]
        n = row["images"]
        ratio = s["transformers"] / s["vlft"]
        with_decode = (s["transformers"] + s["decode"]) / (s["vlft"] + s["decode"])
        check = "grids equal, pixels bit-identical"
        if row["mismatched_grids"] or row["inexact"]:
            check = f"{row['mismatched_grids']} grid mismatches, {row['inexact']} inexact (max {row['worst']:.2e})"
        print(f"{row['max_tiles']:>4} {row['tiles']:>6} | {n / s['vlft']:>10.2f} {n / s['transformers']:>9.2f} "
              f"{ratio:>5.2f}x | {with_decode:>12.2f}x | {100 * s['resize'] / s['vlft']:>19.0f}% | {check}")
    print("ratio = vlft images/s / transformers images/s (same images, interleaved); "
          "+decode adds the identical JPEG decode to both sides")
    if any(r["mismatched_grids"] or r["inexact"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
