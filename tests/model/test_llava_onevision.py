"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, SigLIP + Qwen2): vlft's model built from a tiny
official checkpoint gives the official logits before training, the "anyres_max_N" shrinking included, and
counts an image's tokens as LlavaOnevisionProcessor does."""
import pytest
import torch
from PIL import Image

from vlft.config import spec_from_dict
from vlft.data.tiling import TilingSpec, tiles_for_image
from vlft.families import LLAVA_ONEVISION
from vlft.model.facts import model_facts
from vlft.model.layouts import Layout, detect_layout
from vlft.model.load import build_vlm
from vlft.tiny.checkpoints import make_tiny_llava_onevision_hf

#: (width, height): wide, tall, square, large (a grid past the anyres_max budget, so it is shrunk), odd.
SIZES = [(100, 60), (60, 100), (56, 56), (200, 210), (97, 33), (170, 160)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llava_onevision_hf(tmp_path_factory.mktemp("llava_onevision") / "base")


def _spec(base):
    # model.family stays "llava" until vlft.specs lists "llava_onevision" (the directory's layout decides).
    return spec_from_dict({"model": {"family": "llava", "path": str(base), "attn_implementation": "eager",
                                     "connector": {"downsample_ratio": 1.0}},
                           "data": {"template": "vicuna_v1", "tiling": {"mode": "anyres",
                                                                        "grid_pinpoints": [[56, 112]]}}}).model


def _tiling(info):
    return TilingSpec(mode="anyres", tile_size=info.tile_size, grid_pinpoints=info.grid_pinpoints,
                      mean=LLAVA_ONEVISION.mean, std=LLAVA_ONEVISION.std)


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_llava_onevision_directory_reads_with_its_anyres_max_budget(base):
    assert detect_layout(base) is Layout.HF_LLAVA_ONEVISION
    info, _ = model_facts(_spec(base))
    assert (info.family, info.select_strategy, info.prefix_tokens, info.anyres_max_tiles) == (
        "llava_onevision", "full", 0, 2)


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("width, height", SIZES)
def test_llava_onevision_gives_the_official_logits_before_training(base, width, height):
    from transformers import AutoModelForImageTextToText

    model, _ = build_vlm(_spec(base))
    official = AutoModelForImageTextToText.from_pretrained(base, attn_implementation="eager").eval()
    torch.manual_seed(0)
    pixels = torch.randn_like(tiles_for_image(Image.new("RGB", (width, height)), _tiling(model.info)))
    count = model.info.anyres.token_count((height, width), model.info.tokens_per_tile)
    ids = torch.tensor([[3, 7, *[model.info.image_token_id] * count, 40, 50]])
    sizes = torch.tensor([[height, width]])
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits
        theirs = official(input_ids=ids, pixel_values=pixels[None], image_sizes=sizes).logits
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_the_family_counts_tokens_as_llava_onevision_processor(base):
    info, _ = model_facts(_spec(base))
    image_processor, processor, _ = LLAVA_ONEVISION.processor_files(
        info, _tiling(info), {"size": {"height": info.tile_size, "width": info.tile_size},
                              "image_mean": list(LLAVA_ONEVISION.mean), "image_std": list(LLAVA_ONEVISION.std)})
    for width, height in SIZES:
        _, count = LLAVA_ONEVISION.processor_image_tokens(image_processor, processor,
                                                          Image.new("RGB", (width, height)))
        assert count == info.anyres.token_count((height, width), info.tokens_per_tile), (width, height)
