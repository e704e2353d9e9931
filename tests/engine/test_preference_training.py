"""`vlft train` with schedule.objective dpo / mpo on a tiny InternVL: DPO turns a base that prefers the wrong answer
around, a resume is exact (the loss's state and the precomputed reference included), and --init-from makes the
reference the policy's start."""
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from click.testing import CliRunner
from safetensors.torch import load_file

from vlft.cli import main

from vlft.config import load_config
from vlft.engine.progress import TEXT_LOG as LOG_TEXT
from vlft.engine.train import TrainingInterrupted, train_from_config

from vlft.engine.preference import precompute_reference

COLOURS = [(220, 30, 30), (30, 40, 220), (30, 200, 40), (230, 220, 30)]


def _pairs(root: Path, chosen: str, rejected: str) -> Path:
    rows = []
    for i in range(8):
        name = f"{i}.png"
        if not (root / name).exists():
            Image.new("RGB", (56 + 4 * (i % 3), 56), COLOURS[i % 4]).save(root / name)
        rows.append({"id": f"p{i}", "images": [name], "chosen": {"from": "gpt", "value": chosen},
                     "rejected": {"from": "gpt", "value": rejected},
                     "conversations": [{"from": "human", "value": f"<image>\nQuestion {i}: which word?"}]})
    path = root / "pairs.json"
    path.write_text(json.dumps(rows))
    return path


def _config(root: Path, base: Path, data: Path, *, schedule=None, model=None, engine=None, data_settings=None):
    sections = {
        "model": {"family": "internvl", "path": str(base), "attn_implementation": "eager",
                  "connector": {"train": False}, "llm": {"train": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
                  **(model or {})},
        "data": {"datasets": [{"path": str(data)}], "max_length": 512, **(data_settings or {})},
        "schedule": {"max_steps": 24, "micro_batch_size": 4, "gradient_accumulation": 1, "lr": 5e-3,
                     "warmup_ratio": 0.0, "seed": 0, "objective": "dpo", **(schedule or {})},
        "engine": {"deepspeed": None, "save_steps": 0, "logging_steps": 1, "report_to": [], **(engine or {})},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "run.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def _preference(model_dir_or_ckpt, config: Path) -> float:
    """Share of the pairs whose chosen answer has the higher log-prob under the model (base or checkpoint)."""
    from vlft.data.pair_dataset import build_pair_dataset
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.trained_state import load_trained_state

    spec = load_config(config)
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    if model_dir_or_ckpt is not None:
        load_trained_state(model, model_dir_or_ckpt)
    dataset = build_pair_dataset(spec, tokenizer, model.info)
    logps = precompute_reference(model, dataset, batch_size=4, device=torch.device("cpu"))
    return float((logps[:, 0] > logps[:, 1]).float().mean())


def _metric(row: dict, part: str) -> float:
    return next(value for key, value in row["metrics"].items() if part in key)


def _rows(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    return make_tiny_internvl_hf(tmp_path_factory.mktemp("pref_base") / "base")


def test_dpo_turns_a_base_that_prefers_the_wrong_answer_into_one_that_prefers_the_chosen(tmp_path, base):
    chosen, rejected = "apple", "tree"
    config = _config(tmp_path, base, _pairs(tmp_path, chosen, rejected))
    if _preference(None, config) > 0.5:   # make "chosen" the answer the base likes less
        chosen, rejected = rejected, chosen
        config = _config(tmp_path, base, _pairs(tmp_path, chosen, rejected))
    assert _preference(None, config) <= 0.5
    work = tmp_path / "work"
    result = train_from_config(config, work_dir=str(work))
    rows = [r for r in _rows(work) if "metrics" in r]
    assert _metric(rows[0], "accurac") <= 0.5          # policy = reference at the start: no reward yet
    assert _metric(rows[-1], "accurac") >= 0.9
    assert _metric(rows[-1], "margin") > 0
    assert _preference(result.checkpoint, config) >= 0.9   # the trained model itself now prefers the chosen

    # vlft eval, before/after: asked to pick between the two answers, the base does not name the preferred
    # one, the tuned checkpoint does
    questions = tmp_path / "eval.json"
    questions.write_text(json.dumps([{"image": f"{i}.png", "question": f"Question {i}: which word?",
                                      "choices": [chosen, rejected], "answer": chosen} for i in range(8)]))
    table = CliRunner().invoke(main, ["eval", str(base), str(result.checkpoint), "--data", str(questions),
                                      "--max-new-tokens", "4"])
    assert table.exit_code == 0, table.output
    before, after = re.search(r"overall \(8\)\s+([\d.]+)%\s+([\d.]+)%", table.output).groups()
    assert float(before) <= 50 and float(after) >= 90, table.output


def _trained(ckpt: Path) -> dict:
    return {**load_file(str(ckpt / "llm_adapter" / "adapter_model.safetensors")),
            **load_file(str(ckpt / "trained.safetensors"))}


def _interrupt_at(stop: int):
    def on_step(step, loss):
        if step == stop:
            raise KeyboardInterrupt
    return on_step


def test_an_interrupted_mpo_run_resumed_equals_the_uninterrupted_one(tmp_path, base):
    # a trained connector makes the reference precomputed: it and the loss's running state must survive
    config = _config(tmp_path, base, _pairs(tmp_path, "apple", "tree"), model={"connector": {"train": True}},
                     schedule={"objective": "mpo", "max_steps": 6, "micro_batch_size": 2},
                     engine={"save_steps": 3}, data_settings={"val_split": 0.25})
    whole = train_from_config(config, work_dir=str(tmp_path / "whole"))
    work = tmp_path / "parts"
    with pytest.raises(TrainingInterrupted) as stopped:
        train_from_config(config, work_dir=str(work), on_step=_interrupt_at(2))
    assert (stopped.value.result.checkpoint / "reference_logps.safetensors").is_file()
    rest = train_from_config(config, work_dir=str(work), resume="auto")
    resumed = stopped.value.result.losses + rest.losses
    assert max(abs(a - b) for a, b in zip(resumed, whole.losses)) <= 1e-6, (resumed, whole.losses)
    final, reference = _trained(rest.checkpoint), _trained(whole.checkpoint)
    for name in final:
        assert torch.allclose(final[name], reference[name], atol=1e-6, rtol=0), name
    evals = [r for r in _rows(work) if "eval_metrics" in r]
    assert evals and any("accurac" in key for key in evals[-1]["eval_metrics"])


def test_init_from_an_sft_checkpoint_makes_the_reference_the_policys_start(tmp_path, base):
    sft_data = tmp_path / "sft.json"
    Image.new("RGB", (56, 56), COLOURS[0]).save(tmp_path / "0.png")
    sft_data.write_text(json.dumps([{"image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\nQuestion 0: which word?"}, {"from": "gpt", "value": "apple"}]}] * 4))
    (tmp_path / "sft_cfg").mkdir()
    sft = _config(tmp_path / "sft_cfg", base, sft_data, schedule={"objective": "sft", "max_steps": 3})
    sft_ckpt = train_from_config(sft, work_dir=str(tmp_path / "sft")).checkpoint

    config = _config(tmp_path, base, _pairs(tmp_path, "apple", "tree"), schedule={"max_steps": 2})
    work = tmp_path / "dpo"
    train_from_config(config, work_dir=str(work), init_from=str(sft_ckpt))
    first = [r for r in _rows(work) if "metrics" in r][0]
    # the first step's policy is the SFT adapter, and so is the reference: no margin yet (the base with the
    # adapters off as the reference would give the SFT adapter a margin at once)
    assert abs(_metric(first, "margin")) < 1e-6
    assert f"precomputed with the start model (--init-from {sft_ckpt})" in (work / LOG_TEXT).read_text()

    # a fresh run on the same pairs and start reads the pass back from the data cache, and trains the same
    again = tmp_path / "dpo_again"
    train_from_config(config, work_dir=str(again), init_from=str(sft_ckpt))
    assert "read from" in (again / LOG_TEXT).read_text()
    assert [r["metrics"] for r in _rows(again) if "metrics" in r] == [r["metrics"] for r in _rows(work) if "metrics" in r]


def test_a_dpo_run_under_zero2_equals_the_plain_torch_run(tmp_path, base):
    # the default engine (DeepSpeed ZeRO-2, one process): its forward, reference forward with the adapters off,
    # backward and step give the plain-torch run's losses and rewards
    config = _config(tmp_path, base, _pairs(tmp_path, "apple", "tree"), schedule={"max_steps": 3})
    plain = tmp_path / "plain"
    train_from_config(config, work_dir=str(plain))
    zero2 = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "zero2"),
                                      "--deepspeed", "zero2"])
    assert zero2.exit_code == 0, zero2.output + repr(zero2.exception)
    assert "reward acc" in zero2.output
    ours, theirs = ([r["metrics"] for r in _rows(work) if "metrics" in r] for work in (tmp_path / "zero2", plain))
    assert len(ours) == len(theirs) == 3
    for got, want in zip(ours, theirs):
        for key in ("rewards/margin", "rewards/chosen", "loss/sigmoid"):
            name = next(k for k in want if key in k)
            assert got[name] == pytest.approx(want[name], abs=1e-5), (name, got, want)


def test_a_dpo_run_with_gradient_checkpointing_equals_the_run_without_it(tmp_path, base):
    """The reference forward runs under no_grad with the adapters off: checkpointing must neither warn there nor
    change a step."""
    import warnings

    data = _pairs(tmp_path, "apple", "tree")
    losses = {}
    for on in (False, True):
        config = _config(tmp_path / f"gc-{on}", base, data, schedule={"max_steps": 3},
                         model={"gradient_checkpointing": on, "llm": {"train": "lora", "lora": {"dropout": 0.1}}})
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*requires_grad.*")
            losses[on] = train_from_config(config, work_dir=str(tmp_path / f"work-{on}")).losses
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
