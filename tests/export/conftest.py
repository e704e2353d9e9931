"""Train-like checkpoints for the export tests: tiny bases, LoRA/QLoRA applied, trainable tensors perturbed.

Each is built once per session, on first use, in the format `vlft train` writes (save_trained_state +
tokenizer). LoRA B is zero at init, so every trainable tensor is moved as if trained.
"""
from __future__ import annotations

import pytest
import torch

from vlft.tiny.checkpoints import TinySizes

BASES = {
    "internvl_hf": ("make_tiny_internvl_hf", {}),
    "llava_hf": ("make_tiny_llava_hf", {}),
    "chat_internlm2": ("make_tiny_internvl_chat", {"llm": "internlm2"}),
    "chat_qwen2": ("make_tiny_internvl_chat", {"llm": "qwen2"}),
    "smolvlm_hf": ("make_tiny_smolvlm_hf", {}),
    # 4 vision layers: the fewest llama.cpp's converter names (--to gguf)
    "chat_qwen2_4layer_tower": ("make_tiny_internvl_chat", {"llm": "qwen2", "sizes": TinySizes(vision_layers=4)}),
    "chat_internlm2_4layer_tower": ("make_tiny_internvl_chat", {"llm": "internlm2", "sentencepiece": True,
                                                                "sizes": TinySizes(vision_layers=4)}),
}

#: name -> (base, family, template, model overrides, data overrides)
CHECKPOINTS = {
    # LoRA on the LLM and the vision tower, connector trained; a custom system prompt.
    "internvl_lora": ("internvl_hf", "internvl", "internvl2_5", {"vision": {"train": "lora"}},
                      {"system_prompt": "You are a food expert.", "tiling": {"max_tiles": 4}}),
    "internvl_qlora": ("internvl_hf", "internvl", "internvl2_5", {"llm": {"quantization": {"bits": 4}}},
                       {"tiling": {"max_tiles": 6}}),
    "llava_lora": ("llava_hf", "llava", "vicuna_v1", {"connector": {"downsample_ratio": 1.0}},
                   {"tiling": {"mode": "pad_square"}}),
    "chat_internlm2_lora": ("chat_internlm2", "internvl", "internlm2-chat", {}, {"tiling": {"max_tiles": 6}}),
    "chat_qwen2_lora": ("chat_qwen2", "internvl", "internvl2_5", {}, {"tiling": {"max_tiles": 3,
                                                                                 "use_thumbnail": True}}),
    "smolvlm_lora": ("smolvlm_hf", "smolvlm", "smolvlm", {}, {"tiling": {"mode": "split"}}),
    "chat_internlm2_gguf_lora": ("chat_internlm2_4layer_tower", "internvl", "internlm2-chat", {}, {}),
    "chat_qwen2_gguf_lora": ("chat_qwen2_4layer_tower", "internvl", "internvl2_5", {},
                             {"tiling": {"max_tiles": 3, "use_thumbnail": True}}),
}


def build_train_checkpoint(base, out, *, family, template, model=None, data=None, seed=0):
    from vlft.config import spec_from_dict, spec_to_dict
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.trained_state import save_trained_state

    spec = spec_from_dict({"model": {"family": family, "path": str(base), **(model or {})},
                           "data": {"template": template, **(data or {})}})
    vlm, tokenizer = build_vlm(spec.model)
    apply_training_policy(vlm, spec.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in vlm.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.05)
    save_trained_state(vlm, out, meta={"config": spec_to_dict(spec), "step": 1, "base_model": str(base)})
    tokenizer.save_pretrained(out)
    return out



@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """name -> a tiny base checkpoint directory, written on first use."""
    import vlft.tiny.checkpoints as tiny

    root, made = tmp_path_factory.mktemp("export_bases"), {}

    def get(name):
        if name not in made:
            maker, kwargs = BASES[name]
            made[name] = getattr(tiny, maker)(root / name, **kwargs)
        return made[name]

    return get


@pytest.fixture(scope="session")
def train_ckpt(tmp_path_factory, tiny_base):
    """name -> a train-like checkpoint directory (see CHECKPOINTS), written on first use."""
    root, made = tmp_path_factory.mktemp("export_ckpts"), {}

    def get(name):
        if name not in made:
            base, family, template, model, data = CHECKPOINTS[name]
            made[name] = build_train_checkpoint(tiny_base(base), root / name, family=family, template=template,
                                                model=model, data=data)
        return made[name]

    return get


@pytest.fixture(scope="session")
def merged_fp32(tmp_path_factory, train_ckpt):
    """name -> `vlft merge --dtype fp32` of that checkpoint, written on first use."""
    from vlft.export import merge_checkpoint

    root, made = tmp_path_factory.mktemp("export_merged"), {}

    def get(name):
        if name not in made:
            made[name] = merge_checkpoint(train_ckpt(name), root / name, dtype="fp32", log=lambda _: None)
        return made[name]

    return get

