"""The demo's dataset: procedurally drawn "dishes" whose name can only be read from the picture.

Every question offers the same options in the same order, so the text alone gives chance (1/n); only the
image tells the dishes apart (shape, colour and texture, each drawn with random jitter on a random table).

    write_dish_dataset(root, n_train=400, n_test=48)
      root/images/train_0000.png ...   RGB, `image_size` px square
      root/train.json                  LLaVA rows: question with the options -> the option's letter
      root/test.json                   the same layout + "choices", "answer" (letter), "category" (eval file)
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

Color = tuple[int, int, int]
TABLES: tuple[Color, ...] = ((120, 85, 60), (200, 190, 170), (90, 90, 100), (150, 120, 90), (60, 70, 60))
QUESTIONS = ("Which dish is this?", "What food is in the picture?", "Which dish does this photo show?")
INSTRUCTION = "Answer with the option's letter from the given choices directly."


def _jitter(rng: random.Random, color: Color, amount: int = 25) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _plate(draw: ImageDraw.ImageDraw, rng: random.Random, size: int) -> tuple[float, float, float]:
    """A light plate at a random spot; returns its centre and radius."""
    r = size * rng.uniform(0.38, 0.46)
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05) * size, size / 2 + rng.uniform(-0.05, 0.05) * size
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_jitter(rng, (235, 235, 228), 12))
    return cx, cy, r


def _dumplings(draw, rng, size):
    """Large pan-fried crescents (golden, dark pleats) in a ring."""
    cx, cy, r = _plate(draw, rng, size)
    n = rng.randint(4, 5)
    for k in range(n):
        a = 2 * math.pi * k / n + rng.uniform(-0.2, 0.2)
        x, y, s = cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a), r * rng.uniform(0.36, 0.42)
        start = math.degrees(a) + 180
        draw.pieslice([x - s, y - s, x + s, y + s], start=start, end=start + 180, fill=_jitter(rng, (225, 175, 90)),
                      outline=_jitter(rng, (120, 70, 20)), width=max(1, size // 60))
        for t in (0.3, 0.5, 0.7):  # pleats
            b = math.radians(start + 180 * t)
            draw.line([(x, y), (x + s * math.cos(b), y + s * math.sin(b))], fill=(130, 80, 30),
                      width=max(1, size // 80))


def _noodles(draw, rng, size):
    """Yellow wavy strands across a dark bowl."""
    cx, cy, r = _plate(draw, rng, size)
    draw.ellipse([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=_jitter(rng, (110, 60, 30), 15))
    phase, amp = rng.uniform(0, math.pi), r * rng.uniform(0.06, 0.12)
    for j in range(-3, 4):
        y0 = cy + j * r * 0.18
        pts = [(cx - 0.7 * r + t * 1.4 * r / 20, y0 + amp * math.sin(phase + t * 0.9 + j)) for t in range(21)]
        draw.line(pts, fill=_jitter(rng, (245, 215, 80)), width=max(1, size // 40))


def _pizza(draw, rng, size):
    """A red-orange disc with a crust and dark round slices on top."""
    cx, cy, r = _plate(draw, rng, size)
    draw.ellipse([cx - 0.9 * r, cy - 0.9 * r, cx + 0.9 * r, cy + 0.9 * r], fill=_jitter(rng, (200, 140, 60)))
    draw.ellipse([cx - 0.78 * r, cy - 0.78 * r, cx + 0.78 * r, cy + 0.78 * r], fill=_jitter(rng, (215, 60, 35)))
    for _ in range(rng.randint(5, 8)):
        a, d, s = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.55) * r, r * 0.13
        x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, (120, 20, 25), 15))


def _salad(draw, rng, size):
    """A heap of green leaves covering the plate, with a few red tomatoes."""
    cx, cy, r = _plate(draw, rng, size)
    for _ in range(rng.randint(28, 36)):
        a, d = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 1)) * 0.75 * r
        x, y, s = cx + d * math.cos(a), cy + d * math.sin(a), r * rng.uniform(0.15, 0.24)
        draw.polygon([(x, y - s), (x + s * 0.6, y), (x, y + s), (x - s * 0.6, y)], fill=_jitter(rng, (70, 170, 60)))
    for _ in range(rng.randint(2, 4)):
        a, d, s = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.6) * r, r * 0.1
        x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=_jitter(rng, (220, 40, 40)))


def _sushi(draw, rng, size):
    """White rectangles with a black band and an orange top, in a row."""
    cx, cy, r = _plate(draw, rng, size)
    n = rng.randint(2, 3)
    w, h = r * 0.42, r * 0.32
    for k in range(n):
        x = cx + (k - (n - 1) / 2) * w * 1.25
        for dy in (-0.45, 0.45):
            y = cy + dy * r
            draw.rectangle([x - w / 2, y - h, x + w / 2, y + h], fill=_jitter(rng, (245, 245, 240), 8))
            draw.rectangle([x - w / 2, y - h * 0.25, x + w / 2, y + h * 0.25], fill=_jitter(rng, (20, 30, 20), 10))
            draw.rectangle([x - w / 2, y - h, x + w / 2, y - h * 0.6], fill=_jitter(rng, (250, 130, 60)))


def _soup(draw, rng, size):
    """A blue-rimmed bowl of brown broth with light rings."""
    cx, cy, r = _plate(draw, rng, size)
    draw.ellipse([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=_jitter(rng, (50, 90, 170)))
    draw.ellipse([cx - 0.7 * r, cy - 0.7 * r, cx + 0.7 * r, cy + 0.7 * r], fill=_jitter(rng, (150, 95, 45)))
    for k in range(1, 3):
        q = 0.22 * k * r
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], outline=_jitter(rng, (220, 180, 120)), width=max(1, size // 50))


@dataclass(frozen=True)
class Dish:
    name: str
    draw: Callable


DISHES: tuple[Dish, ...] = (Dish("dumplings", _dumplings), Dish("noodles", _noodles), Dish("pizza", _pizza),
                            Dish("salad", _salad), Dish("sushi", _sushi), Dish("soup", _soup))
LETTERS = "ABCDEFGH"


def draw_dish(dish: Dish, rng: random.Random, size: int) -> Image.Image:
    """One picture of `dish`: drawn at 4x and downsampled (smooth edges), on a random table colour."""
    big = size * 4
    image = Image.new("RGB", (big, big), _jitter(rng, rng.choice(TABLES), 15))
    dish.draw(ImageDraw.Draw(image), rng, big)
    image = image.rotate(rng.uniform(0, 360), resample=Image.BILINEAR, fillcolor=image.getpixel((0, 0)))
    return image.resize((size, size), Image.LANCZOS)


def question_text(question: str, choices: list[str]) -> str:
    """The multiple-choice prompt vlft's eval builds too: question, lettered options, the instruction."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{question}\n{options}\n{INSTRUCTION}"


def write_dish_dataset(root: str | Path, *, n_train: int = 400, n_test: int = 48, n_dishes: int = 4,
                       image_size: int = 56, seed: int = 0) -> dict[str, Path]:
    """Write images, train.json and test.json under `root`; returns their paths.

    Classes are balanced (round robin) in both splits; train and test images come from different seeds.
    """
    if not 2 <= n_dishes <= len(DISHES):
        raise ValueError(f"n_dishes must be between 2 and {len(DISHES)}, got {n_dishes}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    dishes = DISHES[:n_dishes]
    choices = [d.name for d in dishes]
    paths = {}
    for split, count, split_seed in (("train", n_train, seed), ("test", n_test, seed + 10_000)):
        rng = random.Random(f"vlft-demo:{split}:{split_seed}")
        rows = []
        for i in range(count):
            label = i % n_dishes
            image_name = f"images/{split}_{i:04d}.png"
            draw_dish(dishes[label], rng, image_size).save(root / image_name)
            question = QUESTIONS[rng.randrange(len(QUESTIONS))] if split == "train" else QUESTIONS[0]
            rows.append({
                "id": f"{split}-{i}",
                "image": image_name,
                "conversations": [
                    {"from": "human", "value": "<image>\n" + question_text(question, choices)},
                    {"from": "gpt", "value": LETTERS[label]},
                ],
                "choices": choices,
                "answer": LETTERS[label],
                "category": dishes[label].name,
            })
        paths[split] = root / f"{split}.json"
        paths[split].write_text(json.dumps(rows, indent=1))
    paths["images"] = root / "images"
    return paths
