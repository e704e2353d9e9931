"""Fidelity to the base, family by family: a run with lr=0 changes no weight, so every export of it must be the
base itself (the official class's own weights and computation fields), within 1e-4 in fp32.

This is the half of fidelity that comparing an export with vlft's own model cannot see: a base read wrongly
(a key mapped to the wrong slot, a field rewritten) would export wrongly and still "verify".
"""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.families import family_of_config
from vlft.model.layouts import read_safetensors_dir
from vlft.tiny import checkpoints as tiny

#: name -> (writer of the base, writer of its -hf twin or None when the base is -hf, template, tiling, targets)
CASES = {
    "internvl_hf_qwen2": (lambda d: tiny.make_tiny_internvl_hf(d), None, "internvl2_5", {"mode": "dynamic"}, ["hf"]),
    "internvl_hf_llama": (lambda d: tiny.make_tiny_internvl_hf(d, llm="llama"), None, "internvl2_5",
                          {"mode": "dynamic"}, ["hf"]),
    **{f"internvl_chat_{llm}": (lambda d, llm=llm: tiny.make_tiny_internvl_chat(d, llm=llm),
                                lambda d, llm=llm: tiny.make_tiny_internvl_chat_twin(d, llm=llm), None,
                                {"mode": "dynamic"}, ["hf", "internvl-chat"])
       for llm in ("internlm2", "qwen2", "qwen3", "phi3", "llama3")},
    "internvl_chat_ps_v1": (lambda d: tiny.make_tiny_internvl_chat(d, ps_version="v1"), None, None,
                            {"mode": "dynamic"}, ["internvl-chat"]),
    "llava_clip": (lambda d: tiny.make_tiny_llava_hf(d), None, "vicuna_v1", {"mode": "pad_square", "max_tiles": 1},
                   ["hf"]),
    "llava_siglip_full": (lambda d: tiny.make_tiny_llava_hf(d, vision="siglip", select_strategy="full",
                                                            feature_layer=-1),
                          None, "vicuna_v1", {"mode": "pad_square", "max_tiles": 1}, ["hf"]),
    "llava_next": (lambda d: tiny.make_tiny_llava_next_hf(d), None, "vicuna_v1", {"mode": "anyres"}, ["hf"]),
    "llava_onevision": (lambda d: tiny.make_tiny_llava_onevision_hf(d), None, "chatml", {"mode": "anyres"}, ["hf"]),
    "idefics3": (lambda d: tiny.make_tiny_idefics3_hf(d), None, "chatml", {"mode": "split"}, ["hf"]),
    "smolvlm": (lambda d: tiny.make_tiny_smolvlm_hf(d), None, "chatml", {"mode": "split"}, ["hf"]),
}


def _config(root: Path, base: Path, template: str | None, tiling: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (60 + 20 * i, 60), (50 * i, 120, 200 - 40 * i)).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}]})
    (root / "train.json").write_text(json.dumps(rows))
    config = json.loads((base / "config.json").read_text())
    family = family_of_config(config)
    data = {"datasets": [{"path": str(root / "train.json")}], "max_length": 2048, "tiling": tiling}
    if template:
        data["template"] = template
    elif "template" in config:                       # an original-layout base names its own template
        data["template"] = config["template"]
    sections = {
        "model": {"family": family.name if family else "internvl", "path": str(base), "attn_implementation": "eager",
                  "connector": {"downsample_ratio": family.default_downsample_ratio if family else 0.5},
                  "llm": {"train": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}},
        "data": data,
        "schedule": {"max_steps": 1, "micro_batch_size": 2, "lr": 0.0, "warmup_ratio": 0.0},
        "engine": {"save_steps": 0, "deepspeed": None},
    }
    path = root / "run.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def _same_weights(exported: dict, reference: dict) -> None:
    assert sorted(exported) == sorted(reference)
    worst = max(float((exported[k].float() - reference[k].float()).abs().max()) for k in reference)
    assert worst <= 1e-4, worst


def _official_weights(folder: Path) -> dict:
    """The weights as transformers' own class holds them after loading the folder (its key mapping applied:
    an -hf folder may store LLaVA's tower as vision_tower.* or vision_tower.vision_model.*)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def _computation_fields(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    family = family_of_config(config)
    return {field: config.get(field) for field in family.computation_fields}


@pytest.mark.parametrize("case", CASES)
def test_a_run_with_lr_0_exports_the_base_itself_to_every_target(tmp_path, case):
    write_base, write_twin, template, tiling, targets = CASES[case]
    base = write_base(tmp_path / "base")
    runner = CliRunner()
    config = _config(tmp_path / "data", base, template, tiling)
    trained = runner.invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "work")])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    checkpoint = tmp_path / "work" / "checkpoint-1"
    for target in targets:
        out = tmp_path / f"out-{target}"
        done = runner.invoke(main, ["convert", str(checkpoint), str(out), "--to", target, "--dtype", "fp32",
                                    "--no-verify"])
        assert done.exit_code == 0, done.output + repr(done.exception)
        reference = base if target == "internvl-chat" or write_twin is None else write_twin(tmp_path / "twin")
        with torch.no_grad():
            if target == "hf":
                _same_weights(_official_weights(out), _official_weights(reference))
            else:                                          # no official class runs the original layout here
                _same_weights(read_safetensors_dir(out), read_safetensors_dir(reference))
        if target == "hf":
            assert _computation_fields(out) == _computation_fields(reference)
