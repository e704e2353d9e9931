"""Activation checkpointing (model.gradient_checkpointing) changes memory, never the step: the loss and every
trainable gradient equal a run without it, text-only batches included (reentrant checkpointing passes
gradients only to layer inputs that require them)."""
import warnings

import pytest
import torch

from vlft.config import spec_from_dict
from vlft.model.adapters import apply_training_policy
from vlft.model.load import build_vlm


def _model(path, family, checkpointing):
    connector = {"train": True, **({"downsample_ratio": 1.0} if family == "llava" else {})}
    spec = spec_from_dict({"model": {"path": str(path), "family": family, "attn_implementation": "sdpa",
                                     "gradient_checkpointing": checkpointing, "connector": connector,
                                     "llm": {"train": "lora", "lora": {"dropout": 0.1}}},
                           "data": {"tiling": {"mode": "dynamic" if family == "internvl" else "pad_square"}}})
    model, _ = build_vlm(spec.model)
    torch.manual_seed(1)  # the same LoRA initialisation on both sides
    apply_training_policy(model, spec.model)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero B, so every LoRA matrix gets a gradient
            param.data.normal_(0, 0.02)
    return model.train()


def _batch(model, with_image):
    torch.manual_seed(0)
    text = torch.randint(10, 60, (2, 24))
    if not with_image:
        return {"input_ids": text, "attention_mask": torch.ones_like(text), "labels": text.clone()}
    tokens = model.info.tokens_per_tile
    ids = torch.cat([torch.full((2, tokens), model.info.image_token_id), text], dim=1)
    labels = ids.clone()
    labels[:, :tokens] = -100
    attention = torch.ones_like(ids)
    attention[1, -5:] = 0
    labels[1, -5:] = -100
    pixels = torch.randn(2, 3, model.info.tile_size, model.info.tile_size)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "pixel_values": pixels}


def _step(model, batch):
    torch.manual_seed(2)  # the same LoRA dropout masks on both sides
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "None of the inputs have requires_grad=True" would mean lost gradients
        loss = model(**batch, use_cache=False).loss
        loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,family", [("internvl_hf", "internvl"), ("llava_hf", "llava")])
@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
def test_checkpointing_changes_neither_the_loss_nor_any_gradient(tiny_dir, name, family, with_image):
    plain, checkpointed = (_model(tiny_dir[name], family, on) for on in (False, True))
    assert checkpointed.language_model.base_model.model.model.gradient_checkpointing
    loss, grads = _step(plain, _batch(plain, with_image))
    loss_ckpt, grads_ckpt = _step(checkpointed, _batch(checkpointed, with_image))
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys()
    lora = [n for n in grads if "lora_" in n]
    assert lora and all(grads_ckpt[n].abs().sum() > 0 for n in lora)
    for name_ in grads:
        torch.testing.assert_close(grads_ckpt[name_], grads[name_], atol=1e-6, rtol=1e-5, msg=name_)
