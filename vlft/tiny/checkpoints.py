"""Write tiny random-init checkpoints in every layout vlft reads, loadable exactly like real ones."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from vlft.data.tiling import TilingSpec
from vlft.families import IDEFICS3, INTERNVL, LLAVA, SMOLVLM, family_named
from vlft.families.idefics3 import ROW_COL_TOKENS
from vlft.tiny.tokenizer import build_tiny_sentencepiece_tokenizer, build_tiny_tokenizer


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


def _vision_siglip(sizes: TinySizes) -> dict:
    # No CLS token, and a post-layernorm on last_hidden_state that LLaVA's hidden_states[-1] does not see.
    return dict(model_type="siglip_vision_model", hidden_size=sizes.vision_hidden,
                num_hidden_layers=sizes.vision_layers + 1, num_attention_heads=sizes.vision_heads,
                intermediate_size=sizes.vision_hidden * 4, image_size=sizes.tile_size, patch_size=14)


#: make_tiny_llava_hf's vision towers: (config, tokens before the patches).
_LLAVA_TOWERS = {"clip": (_vision_clip, 1), "siglip": (_vision_siglip, 0)}


def _text(sizes: TinySizes, arch: str, vocab: int) -> dict:
    return dict(model_type=arch, hidden_size=sizes.text_hidden, num_hidden_layers=sizes.text_layers,
                num_attention_heads=sizes.text_heads, num_key_value_heads=sizes.text_kv_heads,
                intermediate_size=sizes.text_hidden * 2, vocab_size=vocab, max_position_embeddings=4096,
                tie_word_embeddings=False)


def _special_ids(text_type: str, tokenizer) -> dict:
    """Phi3Config's default special ids (32000) point past a tiny vocabulary: the tokenizer's instead; the
    other LLMs keep their config defaults."""
    if text_type != "phi3":
        return {}
    return dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)


def _seeded(seed: int):
    torch.manual_seed(seed)


def make_tiny_internvl_hf(out_dir: str | Path, *, llm: str = "qwen2", sizes: TinySizes = TinySizes(),
                          seed: int = 0) -> Path:
    """transformers-native InternVL (`InternVLForConditionalGeneration`) with a chatml tokenizer."""
    return _save_internvl_hf(Path(out_dir), text_type=llm, sizes=sizes, seed=seed)


def _save_internvl_hf(out_dir: Path, *, text_type: str, sizes: TinySizes, seed: int,
                      extra_specials: tuple[str, ...] = (), sentencepiece: bool = False) -> Path:
    """An InternVL "-hf" checkpoint on a `text_type` LLM, saved by transformers itself; ``sentencepiece``: an
    InternLM2-like tokenizer.model beside tokenizer.json (vlft.tiny.tokenizer), else the byte-level BPE one."""
    from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

    if sentencepiece:
        tokenizer = build_tiny_sentencepiece_tokenizer(out_dir, family=INTERNVL.name)
    else:
        tokenizer = build_tiny_tokenizer(out_dir, family=INTERNVL.name, chat_style="chatml",
                                         vocab_size=sizes.vocab_size)
    if extra_specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
        tokenizer.save_pretrained(out_dir)
    text_config = AutoConfig.for_model(**_text(sizes, text_type, len(tokenizer)), **_special_ids(text_type, tokenizer))
    config = InternVLConfig(vision_config=_vision_internvl(sizes), text_config=text_config.to_dict(),
                            image_token_id=tokenizer.context_image_token_id, downsample_ratio=0.5,
                            image_seq_length=(sizes.tile_size // 14 // 2) ** 2, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    _seeded(seed)
    model = InternVLForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_llava_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0, vision: str = "clip",
                       select_strategy: str = "default", feature_layer: int = -2) -> Path:
    """transformers-native LLaVA (`LlavaForConditionalGeneration`): CLIP (LLaVA-1.5) or SigLIP + Llama, a
    vicuna-style tokenizer; ``select_strategy`` and ``feature_layer`` are written as the config's
    vision_feature_select_strategy / vision_feature_layer, with the image_seq_length they imply."""
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, family=LLAVA.name, chat_style="llama", vocab_size=sizes.vocab_size)
    text_config = AutoConfig.for_model(**_text(sizes, "llama", len(tokenizer)))
    tower, prefix = _LLAVA_TOWERS[vision]
    vision_config = AutoConfig.for_model(**tower(sizes))
    tokens = (sizes.tile_size // 14) ** 2 + prefix - (select_strategy == "default")
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=feature_layer, vision_feature_select_strategy=select_strategy,
                         image_seq_length=tokens, tie_word_embeddings=False)
    _seeded(seed)
    model = LlavaForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


#: make_tiny_llava_next_hf's canvases (height, width): whole multiples of the 56 px tiny tile.
TINY_PINPOINTS = ((56, 112), (112, 56), (112, 112), (56, 168))


def make_tiny_llava_next_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0,
                            vision: str = "clip", select_strategy: str = "default", feature_layer: int = -2,
                            pinpoints: tuple[tuple[int, int], ...] = TINY_PINPOINTS) -> Path:
    """transformers-native LLaVA-NeXT (`LlavaNextForConditionalGeneration`): CLIP (or SigLIP) + Llama, AnyRes
    pinpoints in tiles of the tiny tower, a random `image_newline`, a vicuna-style tokenizer."""
    from transformers import AutoConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, family=LLAVA.name, chat_style="llama", vocab_size=sizes.vocab_size)
    text_config = AutoConfig.for_model(**_text(sizes, "llama", len(tokenizer)))
    tower, prefix = _LLAVA_TOWERS[vision]
    tokens = (sizes.tile_size // 14) ** 2 + prefix - (select_strategy == "default")
    config = LlavaNextConfig(vision_config=AutoConfig.for_model(**tower(sizes)).to_dict(),
                             text_config=text_config.to_dict(),
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_layer=feature_layer, vision_feature_select_strategy=select_strategy,
                             image_grid_pinpoints=[list(p) for p in pinpoints], image_seq_length=tokens,
                             tie_word_embeddings=False)
    _seeded(seed)
    model = LlavaNextForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_llava_onevision_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0,
                                 pinpoints: tuple[tuple[int, int], ...] = TINY_PINPOINTS + ((112, 168), (168, 168)),
                                 max_tiles_of_features: int = 2) -> Path:
    """transformers-native LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP + Qwen2, "full"
    features of the last hidden layer, a chatml tokenizer. ``max_tiles_of_features`` is its
    vision_aspect_ratio "anyres_max_N" (releases: 9; the tiny default 2 makes the shrinking step run on
    the tiny grids)."""
    from transformers import AutoConfig, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir, family=LLAVA.name, chat_style="chatml", vocab_size=sizes.vocab_size)
    text_config = AutoConfig.for_model(**_text(sizes, "qwen2", len(tokenizer)))
    config = LlavaOnevisionConfig(vision_config=AutoConfig.for_model(**_vision_siglip(sizes)).to_dict(),
                                  text_config=text_config.to_dict(),
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  image_grid_pinpoints=[list(p) for p in pinpoints],
                                  vision_aspect_ratio=f"anyres_max_{max_tiles_of_features}",
                                  tie_word_embeddings=False)
    _seeded(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    return out_dir


def make_tiny_idefics3_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """transformers-native Idefics3 (`Idefics3ForConditionalGeneration`): its SigLIP-style tower, a scale-2 pixel
    shuffle + linear connector, Llama, a chatml tokenizer holding the tile tokens, and the image processor's
    preprocessor_config.json (longest edge 4 tiles, tiles of the tower's size)."""
    return _save_split_family(Path(out_dir), IDEFICS3.name, sizes=sizes, seed=seed)


def make_tiny_smolvlm_hf(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """transformers-native SmolVLM (`SmolVLMForConditionalGeneration`), as make_tiny_idefics3_hf."""
    return _save_split_family(Path(out_dir), SMOLVLM.name, sizes=sizes, seed=seed)


def _save_split_family(out_dir: Path, family_name: str, *, sizes: TinySizes, seed: int) -> Path:
    from transformers import AutoConfig

    family = family_named(family_name)
    tokenizer = build_tiny_tokenizer(out_dir, family=family.name, chat_style="chatml", vocab_size=sizes.vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROW_COL_TOKENS)})
    tokenizer.save_pretrained(out_dir)
    text_config = AutoConfig.for_model(**_text(sizes, "llama", len(tokenizer)))
    vision = dict(hidden_size=sizes.vision_hidden, num_hidden_layers=sizes.vision_layers,
                  num_attention_heads=sizes.vision_heads, intermediate_size=sizes.vision_hidden * 4,
                  image_size=sizes.tile_size, patch_size=14)
    config = family.config_class()(vision_config=vision, text_config=text_config.to_dict(), scale_factor=2,
                                   image_token_id=tokenizer.convert_tokens_to_ids(family.image_tokens.context_token),
                                   tie_word_embeddings=False)
    _seeded(seed)
    model = family.official_class()(config)
    _perturb_norms(model)
    model.save_pretrained(out_dir)
    # The processor files a release ships: its image processor (longest edge 4 tiles) and image_seq_len.
    tiling = TilingSpec(mode="split", tile_size=sizes.tile_size, mean=family.mean, std=family.std)
    common = dict(image_mean=list(family.mean), image_std=list(family.std), do_resize=True, do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
    info = SimpleNamespace(tokens_per_tile=(sizes.tile_size // 14 // 2) ** 2)
    image_processor, processor, _ = family.processor_files(info, tiling, common)
    image_processor.save_pretrained(out_dir)
    (out_dir / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return out_dir


def make_tiny_parts(out_dir: str | Path, *, family: str = INTERNVL.name, sizes: TinySizes = TinySizes(),
                    seed: int = 0, vision: str | None = None) -> tuple[Path, Path]:
    """A vision-encoder directory and an LLM directory (the stage-1 "compose from parts" recipe).

    The LLM's tokenizer lacks the image tokens, as a real base LLM does; vlft adds them. ``vision``: the
    family's usual tower when None, else "clip", "siglip" (transformers' classes) or "internvit" (an
    OpenGVLab InternViT release directory, `make_tiny_internvit_release`).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    out_dir = Path(out_dir)
    vision_dir, llm_dir = out_dir / "vision", out_dir / "llm"
    tower, arch, chat_style = _TINY_PARTS[family]
    tokenizer = build_tiny_tokenizer(llm_dir, family="text", chat_style=chat_style, vocab_size=sizes.vocab_size)
    _seeded(seed)
    if vision == "internvit":
        make_tiny_internvit_release(vision_dir, sizes=sizes, seed=seed)
    else:
        tower = _LLAVA_TOWERS[vision][0] if vision is not None else tower
        AutoModel.from_config(AutoConfig.for_model(**tower(sizes))).save_pretrained(vision_dir)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**_text(sizes, arch, len(tokenizer))))
    _perturb_norms(llm)
    llm.save_pretrained(llm_dir)
    return vision_dir, llm_dir


def make_tiny_internvit_release(out_dir: str | Path, *, sizes: TinySizes = TinySizes(), seed: int = 0,
                                style: str = "300m") -> Path:
    """OpenGVLab's InternViT release layout (``InternVisionModel``, ``model_type: intern_vit_6b``, original key
    names ``embeddings.*``, ``encoder.layers.N.attn.qkv``, ``ls1``, ``norm1`` ...), from a seeded
    transformers ``InternVLVisionModel`` (returned weights: ``make_tiny_internvit_release_twin``).

    style "300m": LayerNorm and a qkv bias (InternViT-300M-448px); "6b": RMSNorm, qk-norm, no qkv bias.
    """
    import json

    from safetensors.torch import save_file

    from vlft.model.internvl_chat import chat_vision_from_native, fuse_vision_qkv
    from vlft.model.internvl_chat.keys import native_to_chat_slot

    model = make_tiny_internvit_release_twin(sizes=sizes, seed=seed, style=style)
    fused: dict[str, dict[int, torch.Tensor]] = {}
    weights = {}
    for name, tensor in model.state_dict().items():
        chat, slot = native_to_chat_slot("vision_tower." + name, "qwen2")  # the LLM plays no part in vision keys
        key = chat.removeprefix("vision_model.")
        if slot is None:
            weights[key] = tensor.contiguous()
        else:
            fused.setdefault(key, {})[slot] = tensor
    for key, parts in fused.items():
        weights[key] = fuse_vision_qkv(parts[0], parts[1], parts[2]).contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {**chat_vision_from_native(model.config.to_dict()), "torch_dtype": "float32", "use_flash_attn": False,
              "auto_map": {"AutoConfig": "configuration_intern_vit.InternVisionConfig",
                           "AutoModel": "modeling_intern_vit.InternVisionModel"}}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("configuration_intern_vit.py", "modeling_intern_vit.py"):
        (out / name).write_text(f"# Placeholder for {name}: a vlft test checkpoint ships no InternViT remote code.\n")
    return out


def make_tiny_internvit_release_twin(*, sizes: TinySizes = TinySizes(), seed: int = 0, style: str = "300m"):
    """The transformers ``InternVLVisionModel`` whose weights `make_tiny_internvit_release` writes (the oracle)."""
    from transformers import InternVLVisionConfig, InternVLVisionModel

    if style not in ("300m", "6b"):
        raise ValueError(f"style must be '300m' or '6b', got {style!r}")
    config = _vision_internvl(sizes)
    config.pop("model_type")
    if style == "6b":
        config.update(norm_type="rms_norm", use_qk_norm=True, attention_bias=False)
    _seeded(seed)
    model = InternVLVisionModel(InternVLVisionConfig(**config)).eval()
    _perturb_norms(model)
    with torch.no_grad():  # layer scales start at 0.1 everywhere: jitter them so a swapped ls1/ls2 shows
        for name, param in model.named_parameters():
            if "lambda_" in name:
                param.add_(torch.randn_like(param) * 0.05)
    return model


#: family -> (tiny vision config, LLM architecture, tokenizer chat style) of its stage-1 parts.
_TINY_PARTS = {INTERNVL.name: (_vision_internvl, "qwen2", "chatml"), LLAVA.name: (_vision_clip, "llama", "llama")}


#: make_tiny_internvl_chat's `llm` options -> (InternVL-chat LLM registry entry, InternVL release it imitates)
TINY_CHAT_LLMS = {
    "internlm2": ("internlm2", "InternVL2-2B"),
    "qwen2": ("qwen2", "InternVL2.5-1B"),
    "qwen3": ("qwen3", "InternVL3.5-1B"),
    "phi3": ("phi3", "InternVL2-4B"),
    "llama": ("llama", "a Llama LLM with the internvl2_5 template"),
    "llama3": ("llama", "InternVL2-Llama3-76B (Hermes-2 template)"),
}
#: Phi-3's chat specials, which the shared tiny vocabulary lacks.
_PHI3_SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def make_tiny_internvl_chat(out_dir: str | Path, *, llm: str = "internlm2", sizes: TinySizes = TinySizes(),
                            seed: int = 0, template: str | None = None, ps_version: str = "v2",
                            tie_word_embeddings: bool = False, sentencepiece: bool = False) -> Path:
    """Original InternVL-chat layout, key names as InternVL ships them; `llm` is one of TINY_CHAT_LLMS.

    ps_version="v1" imitates InternVL-Chat-V1-5's pixel-shuffle order; tie_word_embeddings=True stores no LM
    head (``llm_config.tie_word_embeddings``), as InternVL2-1B / InternVL3-1B on a tied Qwen2-0.5B do;
    sentencepiece=True ships a SentencePiece tokenizer.model as InternVL2 on InternLM2 does (llama.cpp's
    InternLM2 converter reads only that).
    """
    import json
    import tempfile

    from safetensors.torch import load_file, save_file

    from vlft.model.internvl_chat import llm_entry, native_key_to_chat, write_tiny_internvl_chat_checkpoint

    if llm not in TINY_CHAT_LLMS:
        raise ValueError(f"llm must be one of {', '.join(TINY_CHAT_LLMS)}, got {llm!r}")
    llm_arch = TINY_CHAT_LLMS[llm][0]
    default_template = "internvl2_5" if llm == "llama" else llm_entry(llm_arch).default_template
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        native = make_tiny_internvl_chat_twin(tmp, llm=llm, sizes=sizes, seed=seed, sentencepiece=sentencepiece)
        state = load_file(str(native / "model.safetensors"))
        hf_config = json.loads((native / "config.json").read_text())
        if ps_version != "v2":
            hf_config["ps_version"] = ps_version  # how vlft's native config carries a 'v1' pixel shuffle
        write_tiny_internvl_chat_checkpoint((state, hf_config), out_dir, llm_arch=llm_arch,
                                            template=template or default_template)
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
            if (Path(tmp) / name).is_file():
                (out_dir / name).write_bytes((Path(tmp) / name).read_bytes())
    config = json.loads((out_dir / "config.json").read_text())  # written by the layout module; fail early if not
    if tie_word_embeddings:
        weights = load_file(str(out_dir / "model.safetensors"))
        head = native_key_to_chat("language_model.lm_head.weight", llm_arch=llm_arch)
        embed = native_key_to_chat("language_model.model.embed_tokens.weight", llm_arch=llm_arch)
        weights[embed] = weights.pop(head)  # the one matrix a tied model stores serves as both
        save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        config["llm_config"]["tie_word_embeddings"] = True
        (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def make_tiny_internvl_chat_twin(out_dir: str | Path, *, llm: str = "internlm2", sizes: TinySizes = TinySizes(),
                                 seed: int = 0, sentencepiece: bool = False) -> Path:
    """The transformers-native twin of ``make_tiny_internvl_chat(llm=...)``: the same weights for the same seed,
    written by ``InternVLForConditionalGeneration.save_pretrained`` (InternLM2 as Llama), for the official
    class to be the oracle. As make_tiny_internvl_hf, plus the chat specials the shared vocabulary lacks.
    """
    from vlft.model.internvl_chat import llm_entry

    text_type = llm_entry(TINY_CHAT_LLMS[llm][0]).model_type
    return _save_internvl_hf(Path(out_dir), text_type=text_type, sizes=sizes, seed=seed,
                             extra_specials=_PHI3_SPECIALS if llm == "phi3" else (), sentencepiece=sentencepiece)


def _perturb_norms(model: torch.nn.Module) -> None:
    """Random-init norms are all ones; jitter them so a wrong norm mapping changes the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.add_(torch.randn_like(param) * 0.1)
