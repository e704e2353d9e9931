"""Every family of the README's table through the preference journey on tiny checkpoints: check-data on
preference pairs -> DPO 3 steps -> merge -> every `--to` of the family, verified."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import vlft.tiny.checkpoints as tiny
from vlft.cli import main


#: family journey -> (tiny writer, its kwargs, model.family, template, model and data settings, `--to` targets)
JOURNEYS = {
    "internvl_hf": ("make_tiny_internvl_hf", {}, "internvl", "internvl2_5", {}, {"tiling": {"max_tiles": 2}},
                    ("hf", "internvl-chat", "lora")),
    "internvl_chat": ("make_tiny_internvl_chat", {"llm": "internlm2"}, "internvl", "internlm2-chat", {},
                      {"tiling": {"max_tiles": 2}}, ("hf", "internvl-chat", "lora")),
    "llava": ("make_tiny_llava_hf", {}, "llava", "vicuna_v1", {"connector": {"downsample_ratio": 1.0}},
              {"tiling": {"mode": "pad_square"}}, ("hf", "lora")),
    "llava_next": ("make_tiny_llava_next_hf", {}, "llava_next", "vicuna_v1", {"connector": {"downsample_ratio": 1.0}},
                   {"tiling": {"mode": "anyres"}}, ("hf", "lora")),
    "llava_onevision": ("make_tiny_llava_onevision_hf", {}, "llava_onevision", "chatml",
                        {"connector": {"downsample_ratio": 1.0}}, {"tiling": {"mode": "anyres"}}, ("hf", "lora")),
    # the InternVL-chat LLMs users bring (InternVL2-4B, InternVL3.5, InternVL2-Llama3, InternVL-Chat-V1-5)
    "phi3": ("make_tiny_internvl_chat", {"llm": "phi3", "template": "phi3-chat"}, "internvl", "phi3-chat", {},
             {"tiling": {"max_tiles": 2}}, ("hf", "internvl-chat", "lora")),
    "qwen3": ("make_tiny_internvl_chat", {"llm": "qwen3", "template": "internvl2_5"}, "internvl", "internvl2_5", {},
              {"tiling": {"max_tiles": 2}}, ("hf", "internvl-chat", "lora")),
    "llama3": ("make_tiny_internvl_chat", {"llm": "llama3", "template": "Hermes-2"}, "internvl", "Hermes-2", {},
               {"tiling": {"max_tiles": 2}}, ("hf", "internvl-chat", "lora")),
    "chat_v1_5": ("make_tiny_internvl_chat", {"llm": "internlm2", "ps_version": "v1"}, "internvl", "internlm2-chat",
                  {}, {"tiling": {"max_tiles": 2}}, ("internvl-chat",)),
    "llava_siglip": ("make_tiny_llava_hf", {"vision": "siglip"}, "llava", "vicuna_v1",
                     {"connector": {"downsample_ratio": 1.0}}, {"tiling": {"mode": "pad_square"}}, ("hf", "lora")),
    "idefics3": ("make_tiny_idefics3_hf", {}, "idefics3", "idefics3", {}, {"tiling": {"mode": "split"}},
                 ("hf", "lora")),
    "smolvlm": ("make_tiny_smolvlm_hf", {}, "smolvlm", "smolvlm", {}, {"tiling": {"mode": "split"}}, ("hf", "lora")),
}


def _pairs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, other, rgb) in enumerate([("red", "blue", (220, 30, 30)), ("blue", "red", (30, 40, 220))] * 2):
        Image.new("RGB", (60 + 4 * i, 56), rgb).save(root / f"{i}.png")
        rows.append({"id": f"pair-{i}", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}],
                     "chosen": {"from": "gpt", "value": name}, "rejected": {"from": "gpt", "value": other},
                     "images": [f"{i}.png"]})
    (root / "pairs.json").write_text(json.dumps(rows))
    return root / "pairs.json"


def _run(runner: CliRunner, *args: str):
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.parametrize("journey", list(JOURNEYS))
def test_check_data_dpo_merge_and_every_target_verified(tmp_path, journey):
    writer, kwargs, family, template, model, data, targets = JOURNEYS[journey]
    base = getattr(tiny, writer)(tmp_path / "base", **kwargs)
    sections = {
        "model": {"family": family, "path": str(base), "attn_implementation": "eager",
                  **model, "connector": {**model.get("connector", {}), "train": False}},
        "data": {"datasets": [{"path": str(_pairs(tmp_path / "data"))}], "template": template, "max_length": 512,
                 **data},
        "schedule": {"objective": "dpo", "max_steps": 3, "micro_batch_size": 1, "gradient_accumulation": 1,
                     "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1, "sample_every": 0},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    runner = CliRunner()
    checked = _run(runner, "check-data", str(config))
    assert "4 pairs usable" in checked.output
    work = tmp_path / "work"
    trained = _run(runner, "train", str(config), "--work-dir", str(work), "--deepspeed", "none")
    assert "reward acc" in trained.output and "the model with its adapters off" in trained.output
    ckpt = work / "checkpoint-3"
    merged = tmp_path / "merged"
    _run(runner, "merge", str(ckpt), str(merged), "--dtype", "fp32")
    for target in targets:
        source = ckpt if target != "hf" else merged
        out = _run(runner, "convert", str(source), str(tmp_path / target), "--to", target, "--verify", "--dtype",
                   "fp32")
        assert "verify" in out.output, out.output
