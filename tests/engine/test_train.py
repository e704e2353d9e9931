"""`vlft train` on tiny checkpoints: ZeRO-2 in one process and under torchrun, plain torch, stage 1, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from vlft.cli import main
from vlft.engine.deepspeed_config import build_deepspeed_config
from vlft.errors import ConfigError
from vlft.specs import ScheduleSpec

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def make_data(root: Path) -> Path:
    """16 one-colour images and a LLaVA-format file asking for the colour."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate(list(COLOURS.items()) * 4):
        Image.new("RGB", (56 + 8 * (i % 3), 56), rgb).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def write_config(path: Path, *, model: dict, data_file: Path, schedule=None, engine=None, data=None) -> Path:
    sections = {
        "model": {"attn_implementation": "eager", **model},
        "data": {"datasets": [{"path": str(data_file)}], "max_length": 512, **(data or {})},
        "schedule": {"max_steps": 8, "micro_batch_size": 2, "gradient_accumulation": 2, "lr": 2e-3,
                     "warmup_ratio": 0.1, "seed": 0, **(schedule or {})},
        "engine": {"save_steps": 4, "save_total_limit": 1, "logging_steps": 1, **(engine or {})},
    }
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    root = tmp_path_factory.mktemp("engine")
    base = make_tiny_internvl_hf(root / "base")
    data_file = make_data(root / "data")
    lora = {"family": "internvl", "path": str(base), "llm": {"train": "lora", "lora": {"r": 8, "alpha": 16}}}
    config = write_config(root / "lora.py", model=lora, data_file=data_file, engine={
        "sample_prompts": [{"image": str(root / "data" / "0.png"), "prompt": "What colour?"}], "sample_every": 4})
    return {"root": root, "base": base, "data": data_file, "config": config, "lora_model": lora}


def losses(work_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (work_dir / "train_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def adapter_shapes(ckpt: Path) -> dict:
    tensors = {**load_file(str(ckpt / "llm_adapter" / "adapter_model.safetensors")),
               **load_file(str(ckpt / "trained.safetensors"))}
    return {name: tuple(t.shape) for name, t in tensors.items()}


@pytest.fixture(scope="module")
def zero2_run(tiny):
    work = tiny["root"] / "zero2"
    result = CliRunner().invoke(main, ["train", str(tiny["config"]), "--work-dir", str(work), "--deepspeed", "zero2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return work, result.output


def test_zero2_single_process_trains_logs_and_checkpoints(zero2_run):
    from vlft.model.trained_state import build_from_checkpoint

    work, output = zero2_run
    assert "DeepSpeed ZERO2, 1 process(es) on cpu" in output
    assert "language_model          lora" in output and "16 samples kept" in output
    assert "= 4 samples per step" in output and "efficiency with padding" in output
    assert "[sample @ step 4]" in output and "[sample @ step 8]" in output
    curve = losses(work)
    assert len(curve) == 8 and curve[-1] < curve[0]
    assert (work / "latest").read_text().strip() == "checkpoint-8"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-8"]  # save_total_limit=1
    assert (work / "loss.png").stat().st_size > 0 and any((work / "tensorboard").iterdir())
    row = json.loads((work / "train_log.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"} <= set(row)
    model, _, spec = build_from_checkpoint(work / "checkpoint-8")  # the checkpoint describes itself
    assert Path(spec.model.path).is_absolute()
    trained = load_file(str(work / "checkpoint-8" / "trained.safetensors"))
    assert torch.equal(model.multi_modal_projector.linear_1.weight, trained["multi_modal_projector.linear_1.weight"])


def test_torchrun_two_processes_gives_the_same_adapter_shapes(tiny, zero2_run):
    work = tiny["root"] / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vlft.cli",
         "train", str(tiny["config"]), "--work-dir", str(work), "--deepspeed", "zero2",
         "--cfg-options", "schedule.max_steps=4", "--cfg-options", "schedule.gradient_accumulation=1",
         "--cfg-options", "engine.sample_every=0"],
        env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    curve = losses(work)
    assert len(curve) == 4 and curve[-1] < curve[0]
    assert adapter_shapes(work / "checkpoint-4") == adapter_shapes(zero2_run[0] / "checkpoint-8")
    assert sorted(p.name for p in (work / "checkpoint-4").glob("rng_state_*.json")) == ["rng_state_0.json",
                                                                                     "rng_state_1.json"]


def test_plain_torch_without_deepspeed(tiny):
    work = tiny["root"] / "plain"
    result = CliRunner().invoke(main, ["train", str(tiny["config"]), "--work-dir", str(work), "--deepspeed", "none",
                                       "--cfg-options", "engine.sample_every=0",
                                       "--cfg-options", "data.packing=True"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "plain torch (AdamW)" in result.output and "packed rows per step" in result.output
    assert "note: with eager attention a packed row of" in result.output
    curve = losses(work)
    assert len(curve) == 8 and curve[-1] < curve[0]
    assert (work / "checkpoint-8" / "optimizer.safetensors").is_file()


def test_stage1_trains_the_connector_only(tmp_path):
    from vlft.tiny.checkpoints import make_tiny_parts

    vision, llm = make_tiny_parts(tmp_path / "parts", family="llava")
    config = write_config(
        tmp_path / "stage1.py", data_file=make_data(tmp_path / "data"),
        model={"family": "llava", "vision": {"path": str(vision)}, "llm": {"path": str(llm), "train": "frozen"},
               "connector": {"downsample_ratio": 1.0}},
        data={"template": "plain", "tiling": {"mode": "pad_square", "max_tiles": 1, "use_thumbnail": False}},
        schedule={"max_steps": 6, "gradient_accumulation": 1, "lr": 5e-3})
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "zero2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "language_model          frozen" in result.output
    curve = losses(work)
    assert len(curve) == 6 and curve[-1] < curve[0]
    ckpt = work / "checkpoint-6"
    assert not (ckpt / "llm_adapter").exists()
    trained = load_file(str(ckpt / "trained.safetensors"))
    # the connector, plus the embedding rows vlft added for <image> (random, so saved with it)
    assert {k.split(".")[0] for k in trained} <= {"multi_modal_projector", "language_model"}
    assert any(k.startswith("multi_modal_projector.") for k in trained)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("case", ["indivisible", "global_mismatch", "bad_json", "other_experiment", "not_a_model",
                                  "none_under_launcher"])
def test_bad_input_fails_with_one_line_and_writes_nothing(tiny, zero2_run, tmp_path, case):
    config, work, args, env = tiny["config"], tmp_path / "work", [], {}
    if case == "indivisible":
        args = ["--cfg-options", "schedule.global_batch_size=6"]          # 6 is not a multiple of 2 x 2
        expected = "schedule.global_batch_size=6 is not divisible"
    elif case == "global_mismatch":
        args = ["--cfg-options", "schedule.global_batch_size=8"]          # 2 x 2 x 1 process = 4
        expected = "schedule.micro_batch_size=2 x schedule.gradient_accumulation=2 x world size 1 = 4"
    elif case == "bad_json":
        bad = tmp_path / "ds.json"
        bad.write_text('{"zero_optimization": {"stage": 2,}}')
        args = ["--deepspeed", str(bad)]
        expected = f"{bad}: not valid JSON (line 1"
    elif case == "other_experiment":
        work = zero2_run[0]                                               # holds the LoRA run's checkpoints
        args = ["--cfg-options", "model.llm.lora.r=4"]
        expected = "another experiment (model.llm.lora.alpha: 16 there, 8 now; model.llm.lora.r: 8 there, 4 now)"
    elif case == "none_under_launcher":
        args, env = ["--deepspeed", "none"], {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
        expected = "--deepspeed none trains in one process, but the launcher started 2"
    else:
        not_model = tmp_path / "not_a_model"
        not_model.mkdir()
        (not_model / "weights.bin").write_text("x")
        args = ["--cfg-options", f"model.path={not_model}"]
        expected = "no config.json, so this is not a model directory"
    before = _snapshot(work)
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work), *args], env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert _snapshot(work) == before


def test_deepspeed_json_auto_values_are_filled_and_contradictions_named(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 4,
                                "zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}}))
    schedule = ScheduleSpec(micro_batch_size=2, gradient_accumulation=4, max_grad_norm=0.5)
    config = build_deepspeed_config(str(user), schedule, world_size=2, precision="fp32")
    assert (config["train_micro_batch_size_per_gpu"], config["train_batch_size"]) == (2, 16)
    assert config["gradient_clipping"] == 0.5 and config["bf16"]["enabled"] is False
    assert build_deepspeed_config("zero3", schedule, world_size=1, precision="bf16")["bf16"]["enabled"] is True
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4 contradicts schedule.gradient_accumulation"):
        build_deepspeed_config(str(user), ScheduleSpec(micro_batch_size=2, gradient_accumulation=2), world_size=1,
                               precision="fp32")
    user.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match="bf16.enabled=True contradicts training in fp32"):
        build_deepspeed_config(str(user), schedule, world_size=1, precision="fp32")


def test_param_groups_split_learning_rates_and_weight_decay(tiny):
    from vlft.config import load_config
    from vlft.engine.optim import param_groups
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm

    spec = load_config(tiny["config"], ["schedule.connector_lr=1e-3", "schedule.weight_decay=0.1"])
    model, _ = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    groups = {g["name"]: g for g in param_groups(model, spec.schedule)}
    assert set(groups) == {"llm", "connector", "connector/no_decay"}
    assert groups["llm"]["lr"] == 2e-3 and groups["connector"]["lr"] == 1e-3
    assert groups["connector/no_decay"]["weight_decay"] == 0.0 and groups["connector"]["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in groups["connector/no_decay"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())
