"""A tiny experiment the engine tests share: a tiny InternVL with LoRA on 16 one-colour images."""
import json
from pathlib import Path

import pytest
from PIL import Image


def write_colour_experiment(root: Path, *, base: Path | None = None, schedule=None, engine=None, data=None) -> Path:
    """A config (LoRA with dropout on, so resuming must restore the RNG) and its data under `root`."""
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    root.mkdir(parents=True, exist_ok=True)
    base = base or make_tiny_internvl_hf(root / "base")
    rows = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 40, 220))] * 8):
        Image.new("RGB", (56 + 8 * (i % 3), 56), rgb).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(rows))
    sections = {
        "model": {"family": "internvl", "path": str(base), "attn_implementation": "eager",
                  "llm": {"train": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}}},
        "data": {"datasets": [{"path": str(root / "train.json")}], "max_length": 512, **(data or {})},
        "schedule": {"max_steps": 8, "micro_batch_size": 2, "gradient_accumulation": 2, "lr": 2e-3,
                     "warmup_ratio": 0.25, "seed": 0, **(schedule or {})},
        "engine": {"save_steps": 2, "save_total_limit": 2, "logging_steps": 1, **(engine or {})},
    }
    path = root / "config.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


@pytest.fixture(scope="session")
def colour_experiment():
    """write_colour_experiment, for tests (a conftest is not importable by name beside other conftests)."""
    return write_colour_experiment


@pytest.fixture(scope="session")
def colour_base(tmp_path_factory) -> Path:
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    return make_tiny_internvl_hf(tmp_path_factory.mktemp("colour_base") / "base")
