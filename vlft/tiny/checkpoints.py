"""Write tiny random-init checkpoints in every layout vlft reads, loadable exactly like real ones."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlft.tiny.tokenizer import build_tiny_tokenizer


@dataclass(frozen=True)
class TinySizes:
    """Shapes small enough for CPU tests; the demo uses a wider text model so it can learn."""

    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 4
    tile_size: int = 56          # 4x4 patches of 14 px -> 4 tokens per tile after pixel shuffle
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 512


def _vision_internvl(sizes: TinySizes) -> dict:
    return dict(model_type="internvl_vision", hidden_size=sizes.vision_hidden, num_hidden_layers=sizes.vision_layers,
                num_attention_heads=sizes.vision_heads, intermediate_size=sizes.vision_hidden * 4,
                image_size=sizes.tile_size, patch_size=14, attention_bias=True, norm_type="layer_norm",
                use_mean_pooling=True)  # as the real -hf checkpoints: no final vision norm


def _vision_clip(sizes: TinySizes) -> dict:
    return dict(model_type="clip_vision_model", hidden_size=sizes.vision_hidden,
                num_hidden_layers=sizes.vision_layers + 1, num_attention_heads=sizes.vision_heads,
                intermediate_size=sizes.vision_hidden * 4, image_size=sizes.tile_size, patch_size=14,
                projection_dim=sizes.vision_hidden)


def _text(sizes: TinySizes, arch: str, vocab: int) -> dict:
    return dict(model_type=arch, hidden_size=sizes.text_hidden, num_hidden_layers=sizes.text_layers,
                num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
                intermediate_size=sizes.text_hidden * 2, vocab_size=vocab, max_position_embeddings=4096,
                tie_word_embeddings=False)


def _seeded(seed: int):
    torch.manual_seed(seed)


def make_tiny_internvl_hf(out_dir: str | Path, *, llm: str = "qwen2", sizes: TinySizes = TinySizes(),
                          seed: int = 0) -> Path:
    """transformers-native InternVL (`InternVLForConditionalGeneration`) with a chatml tokenizer."""
    from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, family="internvl", chat_style="chatml", vocab_size=sizes.vocab_size)
    text = _text(sizes, llm, len(tokenizer))
    text_config = AutoConfig.for_model(**text)
    config = InternVLConfig(vision_config=_vision_internvl(sizes), text_config=text_config.to_dict(),
                            image_token_id=tokenizer.context_image_token_id, downsample_ratio=0.5,
                            image_seq_length=(sizes.tile_size // 14 // 2) ** 2, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    _seeded(seed)
    model = InternVLForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_llava_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """transformers-native LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP + Llama, vicuna-style tokenizer."""
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, family="llava", chat_style="llama", vocab_size=sizes.vocab_size)
    text_config = AutoConfig.for_model(**_text(sizes, "llama", len(tokenizer)))
    vision_config = AutoConfig.for_model(**_vision_clip(sizes))
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", image_seq_length=(sizes.tile_size // 14) ** 2,
                         tie_word_embeddings=False)
    _seeded(seed)
    model = LlavaForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_parts(out_dir: str | Path, *, family: str = "internvl", sizes: TinySizes = TinySizes(),
                    seed: int = 0) -> tuple[Path, Path]:
    """A vision-encoder directory and an LLM directory (the stage-1 "compose from parts" recipe).

    The LLM's tokenizer lacks the image tokens, as a real base LLM does; vlft adds them.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out_dir = Path(out_dir)
    vision_dir, llm_dir = out_dir / "vision", out_dir / "llm"
    tokenizer = build_tiny_tokenizer(llm_dir, family="text", chat_style="chatml" if family == "internvl" else "llama",
                                     vocab_size=sizes.vocab_size)
    _seeded(seed)
    vision_config = AutoConfig.for_model(**(_vision_internvl(sizes) if family == "internvl" else _vision_clip(sizes)))
    AutoModel.from_config(vision_config).save_pretrained(vision_dir)
    arch = "qwen2" if family == "internvl" else "llama"
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**_text(sizes, arch, len(tokenizer))))
    _perturb_norms(llm)
    llm.save_pretrained(llm_dir)
    return vision_dir, llm_dir


def make_tiny_internvl_chat(out_dir: str | Path, *, llm: str = "internlm2", sizes: TinySizes = TinySizes(),
                            seed: int = 0, template: str | None = None) -> Path:
    """Original InternVL-chat layout (InternVL2-2B-like with llm="internlm2", InternVL2.5-1B-like with "qwen2")."""
    import json
    import tempfile

    from vlft.model.internvl_chat_layout import write_tiny_internvl_chat_checkpoint

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        native = make_tiny_internvl_hf(tmp, llm="llama" if llm == "internlm2" else llm, sizes=sizes, seed=seed)
        write_tiny_internvl_chat_checkpoint(native, out_dir, llm_arch=llm,
                                            template=template or ("internlm2-chat" if llm == "internlm2" else
                                                                  "internvl2_5"))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (out_dir / name).write_bytes((Path(tmp) / name).read_bytes())
    json.loads((out_dir / "config.json").read_text())  # written by the layout module; fail early if not
    return out_dir


def _perturb_norms(model: torch.nn.Module) -> None:
    """Random-init norms are all ones; jitter them so a wrong norm mapping changes the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.add_(torch.randn_like(param) * 0.1)
