"""Opt-in: vLLM (its CPU build, in its own venv) answers like `vlft chat` on tiny exports of both layouts and
on a `--to lora` adapter. Runs only with VLFT_VLLM_PYTHON pointing at that venv's python (see
tools/bench/README.md, "Serving check"); a run takes about a minute per folder on two cores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.export.conftest import build_train_checkpoint

VLLM_PYTHON = os.environ.get("VLFT_VLLM_PYTHON")
pytestmark = pytest.mark.skipif(not VLLM_PYTHON or not Path(VLLM_PYTHON).exists(),
                                reason="set VLFT_VLLM_PYTHON to a vLLM venv's python to run the serving check")
TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_serving.py"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An InternLM2 InternVL-chat base (head_dim 32: vLLM's CPU attention has no kernel for 16), trained with the
    connector frozen, exported three ways; and two images."""
    import numpy as np
    from PIL import Image

    import vlft.tiny.checkpoints as tiny
    from vlft.export import convert_checkpoint
    from vlft.export.target_lora import export_lora

    root = tmp_path_factory.mktemp("serving")
    base = tiny.make_tiny_internvl_chat(root / "base", llm="internlm2", sizes=tiny.TinySizes(text_heads=2,
                                                                                            text_kv_heads=1))
    ckpt = build_train_checkpoint(base, root / "ckpt", family="internvl", template="internlm2-chat",
                                  model={"connector": {"train": False}}, data={"tiling": {"max_tiles": 4}})
    paths = {"base": base, "lora": export_lora(ckpt, root / "lora", log=lambda _: None).out}
    for target in ("hf", "internvl-chat"):
        paths[target] = convert_checkpoint(ckpt, root / target, target=target, dtype="fp32", log=lambda _: None)
    rng = np.random.default_rng(0)
    paths["images"] = []
    for i, (w, h) in enumerate([(56, 56), (150, 70)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        paths["images"].append(root / f"img{i}.png")
    return paths


def _check(*args, images) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOL), *map(str, args), "--vllm-python", VLLM_PYTHON,
               "--prompt", "What is shown?", "--prompt", "Describe the dish briefly."]
    for image in images:
        command += ["--image", str(image)]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500)


@pytest.mark.parametrize("target", ["hf", "internvl-chat"])
def test_vllm_answers_equal_vlft_chat_on_an_export(served, target):
    done = _check(served[target], images=served["images"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASS: 4 of 4" in done.stdout


def test_vllm_serves_the_lora_adapter_unmerged_like_vlft_chat(served):
    done = _check("--lora", served["lora"], "--base", served["base"], images=served["images"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASS: 4 of 4" in done.stdout
