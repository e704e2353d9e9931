"""The InternVL-chat LLMs users bring (Phi-3, Qwen3, Llama-3 with Hermes-2; InternVL-Chat-V1-5's ps_version v1),
through the whole journey on tiny original-layout checkpoints: check-data -> 3 training steps -> merge ->
every `--to` target verified; and `--to lora` through the target registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.tiny.checkpoints import make_tiny_internvl_chat

#: tiny InternVL-chat LLM -> (template the run uses, llm_config.architectures of the base)
JOURNEYS = {
    "phi3": ("phi3-chat", "Phi3ForCausalLM"),           # InternVL2-4B
    "qwen3": ("internvl2_5", "Qwen3ForCausalLM"),       # InternVL3.5
    "llama3": ("Hermes-2", "LlamaForCausalLM"),         # InternVL2-Llama3
}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 40, 220))] * 2):
        Image.new("RGB", (60 + 4 * i, 56), rgb).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def _config(tmp_path: Path, base: Path, template: str, **model) -> Path:
    sections = {
        "model": {"family": "internvl", "path": str(base), "attn_implementation": "eager", **model},
        "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "template": template, "max_length": 256,
                 "tiling": {"max_tiles": 2}},
        "schedule": {"max_steps": 3, "micro_batch_size": 1, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1, "sample_every": 0},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config


def _run(runner: CliRunner, *args: str):
    result = runner.invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _train(tmp_path: Path, base: Path, template: str, **model) -> Path:
    config = _config(tmp_path, base, template, **model)
    runner = CliRunner()
    _run(runner, "check-data", str(config))
    work = tmp_path / "work"
    _run(runner, "train", str(config), "--work-dir", str(work), "--deepspeed", "none")
    return work / "checkpoint-3"


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("llm", list(JOURNEYS))
def test_an_original_layout_base_trains_merges_and_converts_verified_to_both_layouts(tmp_path, llm):
    template, architecture = JOURNEYS[llm]
    base = make_tiny_internvl_chat(tmp_path / "base", llm=llm, template=template)
    ckpt = _train(tmp_path, base, template)
    runner = CliRunner()
    merged = tmp_path / "merged"
    _run(runner, "merge", str(ckpt), str(merged), "--dtype", "fp32")

    hf = _run(runner, "convert", str(merged), str(tmp_path / "hf"), "--to", "hf", "--verify", "--dtype", "fp32")
    assert "verify (hf)" in hf.output and "max |Δlogit|" in hf.output
    assert "chat template + processor give the training prompt" in hf.output

    chat = _run(runner, "convert", str(ckpt), str(tmp_path / "chat"), "--to", "internvl-chat", "--verify",
                "--dtype", "fp32")
    assert "verify (internvl-chat)" in chat.output and "computation fields as the base had them" in chat.output
    written = json.loads((tmp_path / "chat" / "config.json").read_text())
    assert written["template"] == template
    assert written["llm_config"]["architectures"] == [architecture]
    assert sorted(p.name for p in (tmp_path / "chat").glob("*.py")) == sorted(p.name for p in base.glob("*.py"))


# ------------------------------------------------------------------------------------------------
# InternVL-Chat-V1-5: ps_version v1


@pytest.fixture(scope="module")
def v1_journey(tmp_path_factory):
    """A 'v1' base, trained 3 steps through the CLI: (base, checkpoint, root)."""
    root = tmp_path_factory.mktemp("ps_v1")
    base = make_tiny_internvl_chat(root / "base", llm="internlm2", ps_version="v1")
    return base, _train(root, base, "internlm2-chat"), root


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_ps_version_v1_base_trains_and_converts_verified_to_internvl_chat(v1_journey, tmp_path):
    from vlft.model.trained_state import read_checkpoint_meta

    base, ckpt, _ = v1_journey
    assert read_checkpoint_meta(ckpt)["info"]["ps_version"] == "v1"
    for source, out in ((ckpt, tmp_path / "from-ckpt"), (None, tmp_path / "from-merged")):
        if source is None:  # the merged directory keeps the pixel-shuffle order for a later convert
            source = tmp_path / "merged"
            _run(CliRunner(), "merge", str(ckpt), str(source), "--dtype", "fp32")
        result = _run(CliRunner(), "convert", str(source), str(out), "--to", "internvl-chat", "--verify",
                      "--dtype", "fp32")
        assert "verify (internvl-chat)" in result.output
        assert json.loads((out / "config.json").read_text())["ps_version"] == "v1"


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_ps_version_v1_model_is_refused_to_hf_in_one_line(v1_journey, tmp_path):
    base, ckpt, root = v1_journey
    merged = root / "merged-for-hf"
    if not merged.exists():
        _run(CliRunner(), "merge", str(ckpt), str(merged), "--dtype", "fp32")
    for source in (ckpt, merged):
        result = CliRunner().invoke(main, ["convert", str(source), str(tmp_path / "hf"), "--to", "hf"])
        assert result.exit_code == 2
        assert _lines(result.output) == [
            "error: --to hf: the base uses ps_version='v1' (InternVL-Chat-V1-5); transformers' InternVL implements "
            "only the 'v2' pixel shuffle; use --to internvl-chat"]
        assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------------------------------
# --to lora, a target of the registry


def test_convert_help_lists_every_target_with_the_lora_route():
    result = CliRunner().invoke(main, ["convert", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "[hf|internvl-chat|lora|gguf]" in text
    assert "gguf: GGUF + mmproj for llama.cpp and Ollama" in text
    assert "lora: the LLM's LoRA as a PEFT adapter for `vllm serve BASE --enable-lora`" in text
    assert "model.connector.train=False" in text


@pytest.mark.battery("checkpoints", was="silent")
def test_cli_convert_to_lora_is_refused_in_one_line_when_the_connector_trained(train_ckpt, tmp_path):
    ckpt = train_ckpt("internvl_lora")
    result = CliRunner().invoke(main, ["convert", str(ckpt), str(tmp_path / "lora"), "--to", "lora"])
    assert result.exit_code == 2 and len(_lines(result.output)) == 1, result.output
    assert result.output.startswith("error: --to lora: training also changed the connector")
    assert "--to hf" in result.output and not (tmp_path / "lora").exists()


def test_cli_convert_to_lora_writes_an_adapter_that_peft_applies_with_the_merged_logits(tiny_base, tmp_path):
    from tests.export.conftest import build_train_checkpoint

    ckpt = build_train_checkpoint(tiny_base("internvl_hf"), tmp_path / "ckpt", family="internvl",
                                  template="internvl2_5", model={"connector": {"train": False}})
    result = _run(CliRunner(), "convert", str(ckpt), str(tmp_path / "lora"), "--to", "lora")
    assert "verify: peft on the official class = merged logits" in result.output
    diff = float(result.output.split("merged logits (max |Δ| ")[1].split(")")[0])
    assert diff <= 1e-5
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None and config["target_modules"]


@pytest.mark.parametrize("llm, fused", [("phi3", "self_attn.qkv_proj"), ("qwen3", "self_attn.q_proj")])
def test_lora_of_an_original_layout_base_uses_the_llms_own_module_names(tmp_path, llm, fused):
    """Phi-3 trains its fused qkv_proj / gate_up_proj (vlft's default targets cover them), Qwen3 q/k/v; both
    adapters add up, on the base's own tensors, to the merged weights."""
    from tests.export.conftest import build_train_checkpoint
    from vlft.export.target_lora import export_lora

    template = JOURNEYS[llm][0]
    base = make_tiny_internvl_chat(tmp_path / "base", llm=llm, template=template)
    ckpt = build_train_checkpoint(base, tmp_path / "ckpt", family="internvl", template=template,
                                  model={"connector": {"train": False}})
    result = export_lora(ckpt, tmp_path / "lora", log=lambda _: None)
    assert result.max_abs_weight_diff is not None and result.max_abs_weight_diff <= 1e-5
    names = set(json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["target_modules"])
    assert f"language_model.model.layers.0.{fused}" in names
    if llm == "phi3":
        assert "language_model.model.layers.0.mlp.gate_up_proj" in names
