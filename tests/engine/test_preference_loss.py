"""The preference losses against implementations we did not write.

- DPO (sigmoid) and IPO: on the same pair batch of a tiny InternVL and a tiny LLaVA-1.5 checkpoint with the same
  LoRA weights, vlft's loss, rewards and LoRA gradients equal TRL's `DPOTrainer.compute_loss` run on transformers'
  official class (peft adapters disabled as its reference, as vlft's) within 1e-5 in fp32. The generation (SFT)
  term of MPO is checked the same way, against TRL's `loss_type="sft"`.
- MPO's three terms (arXiv 2411.10442, §3.2; InternVL's mpo scripts: sigmoid + bco_pair with its running reward
  mean + the chosen answers' LM loss, weights 0.8 / 0.2 / 1.0) against a reference written below from that
  definition, over several micro batches (the running mean) and through a state_dict round trip (a resume).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlft.engine.preference_loss import PreferenceLoss, PreferenceSettings, sequence_logps

TOLERANCE = 1e-5
LLM_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


# ------------------------------------------------------------------------------------------------
# tensor level: log-probs, label smoothing, MPO's definition


def test_sequence_logps_equals_log_softmax_gathered_under_the_shifted_labels():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :3] = -100
    labels[1, 5:] = -100
    sums, counts = sequence_logps(logits, labels)
    expected = []
    for row in range(3):
        total = 0.0
        for t in range(1, 7):
            if labels[row, t] != -100:
                total += float(logits[row, t - 1].log_softmax(-1)[labels[row, t]])
        expected.append(total)
    torch.testing.assert_close(sums, torch.tensor(expected), atol=TOLERANCE, rtol=0)
    assert counts.tolist() == [4, 2, 4]


def _logps(seed: int, pairs: int = 3):
    generator = torch.Generator().manual_seed(seed)
    values = [-20 * torch.rand(pairs, generator=generator, dtype=torch.float64) for _ in range(4)]
    tokens = [torch.randint(3, 12, (pairs,), generator=generator) for _ in range(2)]
    return [v.requires_grad_() for v in values[:2]] + values[2:] + tokens


def test_label_smoothing_is_conservative_dpo():
    beta, eps = 0.2, 0.15
    pc, pr, rc, rr, nc, nr = _logps(1)
    result = PreferenceLoss(PreferenceSettings("dpo", beta=beta, label_smoothing=eps))(pc, pr, rc, rr, nc, nr)
    # Mitchell (2023), "A note on DPO with noisy preferences": the label is flipped with probability eps
    h = beta * ((pc - rc) - (pr - rr))
    expected = (-(1 - eps) * torch.log(torch.sigmoid(h)) - eps * torch.log(torch.sigmoid(-h))).mean()
    torch.testing.assert_close(result.loss, expected, atol=TOLERANCE, rtol=0)


class MpoAsPublished:
    """MPO written from its definition (Wang et al. 2024, arXiv 2411.10442, §3.2, eqs. for L_p, L_q, L_g), with
    the reward shift of L_q as InternVL trained it (its mpo scripts run TRL 0.x's `bco_pair`, whose shift is the
    mean of all batch-mean rewards seen so far, the current batch included)."""

    def __init__(self, beta, weights=(0.8, 0.2, 1.0)):
        self.beta, self.weights, self.history = beta, weights, []

    def __call__(self, pc, pr, rc, rr, nc):
        beta = self.beta
        preference = -torch.log(torch.sigmoid(beta * (pc - rc) - beta * (pr - rr))).mean()
        self.history.append(float(torch.cat([beta * (pc - rc), beta * (pr - rr)]).detach().mean()))
        shift = sum(self.history) / len(self.history)
        quality = (-torch.log(torch.sigmoid(beta * (pc - rc) - shift))
                   - torch.log(torch.sigmoid(-(beta * (pr - rr) - shift)))).mean()
        generation = -pc.sum() / nc.sum()
        terms = {"loss/sigmoid": preference, "loss/bco": quality, "loss/sft": generation}
        total = sum(w * t for w, t in zip(self.weights, terms.values()))
        return total, terms


def test_mpo_terms_equal_the_published_definition_over_several_batches_and_a_resume():
    beta = 0.1
    loss = PreferenceLoss(PreferenceSettings("mpo", beta=beta))
    reference = MpoAsPublished(beta)
    for step in range(5):
        if step == 3:   # a resume: a fresh loss given the saved state continues the running mean exactly
            state = {k: v.clone() for k, v in loss.state_dict().items()}
            loss = PreferenceLoss(PreferenceSettings("mpo", beta=beta))
            loss.load_state_dict(state)
        pc, pr, rc, rr, nc, nr = _logps(10 + step)
        result = loss(pc, pr, rc, rr, nc, nr)
        grads = torch.autograd.grad(result.loss, [pc, pr])
        pc2, pr2 = pc.detach().clone().requires_grad_(), pr.detach().clone().requires_grad_()
        total, terms = reference(pc2, pr2, rc, rr, nc)
        expected_grads = torch.autograd.grad(total, [pc2, pr2])
        torch.testing.assert_close(result.loss, total, atol=TOLERANCE, rtol=0)
        for name, value in terms.items():
            torch.testing.assert_close(result.terms[name], value.detach(), atol=TOLERANCE, rtol=0, msg=name)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=0)
    assert int(loss.state_dict()["reward_batches"]) == 5


def test_mpo_weights_are_each_configurable():
    pc, pr, rc, rr, nc, nr = _logps(3)
    parts = PreferenceLoss(PreferenceSettings("mpo"))(pc, pr, rc, rr, nc, nr).terms
    weighted = PreferenceLoss(PreferenceSettings("mpo", preference_weight=0.5, quality_weight=2.0,
                                                 generation_weight=0.0))(pc, pr, rc, rr, nc, nr)
    expected = 0.5 * parts["loss/sigmoid"] + 2.0 * parts["loss/bco"]
    torch.testing.assert_close(weighted.loss.detach(), expected, atol=TOLERANCE, rtol=0)


def test_an_unknown_objective_is_refused_by_name():
    with pytest.raises(ValueError, match="objective 'kto'"):
        PreferenceSettings("kto")


# ------------------------------------------------------------------------------------------------
# model level: vlft's objective on vlft's model vs TRL's DPOTrainer on transformers' class

#: family -> (tiny writer, model settings, data settings)
FAMILIES = {
    "internvl": ("make_tiny_internvl_hf", {}, {"tiling": {"max_tiles": 4}}),
    "llava": ("make_tiny_llava_hf", {"connector": {"downsample_ratio": 1.0}}, {"tiling": {"mode": "pad_square"}}),
}


def _pairs(root: Path) -> Path:
    rows = []
    for i, (size, chosen, rejected) in enumerate([((61, 47), "a red apple pie", "a tree"),
                                                  ((45, 70), "blue", "the blue sky at night")]):
        Image.new("RGB", size, (200 - 60 * i, 30 + 90 * i, 60)).save(root / f"{i}.png")
        rows.append({"id": f"p{i}", "images": [f"{i}.png"],
                     "conversations": [{"from": "human", "value": f"<image>\nWhat is in picture {i}?"}],
                     "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}})
    (root / "pairs.json").write_text(json.dumps(rows))
    return root / "pairs.json"


@pytest.fixture(scope="module", params=list(FAMILIES))
def setup(request, tmp_path_factory):
    """(family, spec, vlft's model with random non-zero LoRA weights on the LLM, a batch of 2 pairs, the base
    folder (transformers' class loads it for TRL), tokenizer, a work folder)."""
    import vlft.tiny.checkpoints as tiny
    from vlft.config import load_config
    from vlft.data.pair_dataset import build_pair_dataset, pair_collate
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm

    family = request.param
    writer, model_settings, data_settings = FAMILIES[family]
    root = tmp_path_factory.mktemp(f"pref_loss_{family}")
    base = getattr(tiny, writer)(root / "base")
    sections = {
        "model": {"family": family, "path": str(base), "attn_implementation": "eager", **model_settings,
                  "connector": {**model_settings.get("connector", {}), "train": False},
                  "llm": {"train": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}},
        "data": {"datasets": [{"path": str(_pairs(root))}], "max_length": 512, **data_settings},
        "schedule": {"objective": "dpo", "max_steps": 1},
        "engine": {"deepspeed": None, "report_to": []},
    }
    (root / "run.py").write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    spec = load_config(root / "run.py")
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    dataset = build_pair_dataset(spec, tokenizer, model.info)
    batch = pair_collate([dataset[0], dataset[1]], pad_token_id=tokenizer.pad_token_id or 0)
    return family, spec, model, batch, base, tokenizer, root


def _lora_tail(name: str) -> str:
    """A LoRA weight's name from the decoder layer on ("layers.0.self_attn.q_proj.lora_A"), in either model."""
    return re.search(r"layers\.\d+\..*lora_[AB]", name).group(0)


def _copy_lora(vlft_model, trl_model) -> dict[str, str]:
    """Give TRL's adapter vlft's LoRA weights; {vlft name: TRL name} of every LoRA weight (the same set)."""
    ours = {_lora_tail(n): (n, p) for n, p in vlft_model.named_parameters() if "lora_" in n}
    theirs = {_lora_tail(n): (n, p) for n, p in trl_model.named_parameters() if "lora_" in n and ".default." in n}
    assert sorted(ours) == sorted(theirs), "the two LoRA setups wrap different modules"
    with torch.no_grad():
        for tail, (_, param) in theirs.items():
            param.copy_(ours[tail][1])
    return {ours[tail][0]: theirs[tail][0] for tail in ours}


def _trl_trainer(setup, loss_type: list[str], beta: float, loss_weights=None):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    family, spec, model, batch, base, tokenizer, root = setup
    official = AutoModelForImageTextToText.from_pretrained(str(base), attn_implementation="eager",
                                                           dtype=torch.float32)
    lora_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LLM_LORA_TARGET)
    args = DPOConfig(output_dir=str(root / f"trl-{'-'.join(loss_type)}"), beta=beta, loss_type=loss_type,
                     loss_weights=loss_weights, report_to=[], use_cpu=True, bf16=False, fp16=False,
                     per_device_train_batch_size=2, max_length=None)
    # the dataset only lets the trainer start: the batch compared is vlft's, given to compute_loss directly
    dataset = Dataset.from_list([{"prompt": "x", "chosen": " y", "rejected": " z"}])
    trainer = DPOTrainer(model=official, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config)
    names = _copy_lora(model, trainer.model)
    return trainer, names


def _trl_inputs(family: str, spec, batch: dict) -> dict:
    from vlft.families import family_named

    completion = (batch["labels"] != -100).long()
    assert torch.equal(batch["input_ids"][completion.bool()], batch["labels"][completion.bool()])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": completion,
              "pixel_values": family_named(family).official_image_inputs(batch["pixel_values"])}
    if spec.data.tiling.mode == "anyres":   # the only official classes that take image_sizes
        inputs["image_sizes"] = batch["image_sizes"]
    return inputs


class _Engine:
    """What PreferenceObjective calls: the model, and the model under `.module` (as DeepSpeed's engine)."""

    def __init__(self, model):
        self.module = model

    def __call__(self, **inputs):
        return self.module(**inputs)


def _vlft_step(setup, objective_name: str, beta: float):
    import dataclasses

    from vlft.engine.preference import PreferenceObjective

    family, spec, model, batch, *_ = setup
    spec = dataclasses.replace(spec, schedule=dataclasses.replace(spec.schedule, objective=objective_name, beta=beta))
    model.zero_grad(set_to_none=True)
    loss, metrics = PreferenceObjective(spec).loss(_Engine(model), batch, [0, 1])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return loss.detach(), metrics, grads


def _trl_step(setup, loss_type: list[str], beta: float, loss_weights=None):
    family, spec, model, batch, *_ = setup
    trainer, names = _trl_trainer(setup, loss_type, beta, loss_weights)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, _trl_inputs(family, spec, batch))
    loss.backward()
    params = dict(trainer.model.named_parameters())
    grads = {ours: params[theirs].grad.detach().clone() for ours, theirs in names.items()}
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    return loss.detach(), metrics, grads


def _assert_grads_equal(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys()
    assert any(float(g.abs().max()) > 1e-4 for g in ours.values()), "no gradient reached the adapters"
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=TOLERANCE, rtol=0, msg=name)


def test_dpo_loss_rewards_and_gradients_equal_trl(setup):
    beta = 0.5
    loss, metrics, grads = _vlft_step(setup, "dpo", beta)
    trl_loss, trl_metrics, trl_grads = _trl_step(setup, ["sigmoid"], beta)
    assert abs(float(loss) - math.log(2)) > 1e-3, "the rewards are zero: the check would be trivial"
    torch.testing.assert_close(loss, trl_loss, atol=TOLERANCE, rtol=0)
    for ours, theirs in [("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("rewards/margin", "rewards/margins"), ("rewards/accuracy", "rewards/accuracies"),
                         ("logps/chosen", "logps/chosen"), ("logps/rejected", "logps/rejected")]:
        assert metrics[ours] == pytest.approx(trl_metrics[theirs], abs=TOLERANCE), ours
    _assert_grads_equal(grads, trl_grads)


def test_ipo_loss_and_gradients_equal_trl(setup):
    beta = 0.5
    loss, _, grads = _vlft_step(setup, "ipo", beta)
    trl_loss, _, trl_grads = _trl_step(setup, ["ipo"], beta)
    torch.testing.assert_close(loss, trl_loss, atol=TOLERANCE, rtol=0)
    _assert_grads_equal(grads, trl_grads)


def test_mpo_preference_and_generation_terms_equal_trl(setup):
    """TRL's sigmoid + sft with MPO's weights are MPO without its quality term (checked above against the paper)."""
    import dataclasses

    from vlft.engine.preference import PreferenceObjective

    beta = 0.1
    family, spec, model, batch, *_ = setup
    spec = dataclasses.replace(spec, schedule=dataclasses.replace(spec.schedule, objective="mpo", beta=beta,
                                                                  quality_weight=0.0))
    model.zero_grad(set_to_none=True)
    loss, metrics = PreferenceObjective(spec).loss(_Engine(model), batch, [0, 1])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trl_loss, trl_metrics, trl_grads = _trl_step(setup, ["sigmoid", "sft"], beta, loss_weights=[0.8, 1.0])
    torch.testing.assert_close(loss.detach(), trl_loss, atol=TOLERANCE, rtol=0)
    _assert_grads_equal(grads, trl_grads)
    # and the generation term alone is TRL's SFT term: mean NLL per chosen answer token
    sft_loss, _, _ = _trl_step(setup, ["sft"], beta)
    assert metrics["loss/sft"] == pytest.approx(float(sft_loss), abs=TOLERANCE)
