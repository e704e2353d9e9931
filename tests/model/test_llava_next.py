"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): vlft's model built from a tiny official checkpoint gives the
official logits before training (unpadded AnyRes grid features, `image_newline`), and counts an image's tokens
as LlavaNextProcessor does."""
import pytest
import torch
from PIL import Image

from vlft.config import spec_from_dict
from vlft.data.tiling import TilingSpec, tiles_for_image
from vlft.families import LLAVA_NEXT, family_of_config
from vlft.model.adapters import apply_training_policy
from vlft.model.facts import model_facts
from vlft.model.layouts import Layout, detect_layout
from vlft.model.load import build_vlm
from vlft.model.trained_state import trained_tensors
from vlft.model.vlm import ModelInputError
from vlft.tiny.checkpoints import TINY_PINPOINTS, make_tiny_llava_next_hf

#: (width, height): wide, tall, very wide, square, larger than every canvas, one that pads by an odd amount.
SIZES = [(100, 60), (60, 100), (150, 50), (56, 56), (200, 210), (97, 33)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_llava_next_hf(tmp_path_factory.mktemp("llava_next") / "base")


def _spec(base):
    # model.family stays "llava" until vlft.specs lists "llava_next" (the directory's layout decides the class).
    return spec_from_dict({"model": {"family": "llava", "path": str(base), "attn_implementation": "eager",
                                     "connector": {"downsample_ratio": 1.0}},
                           "data": {"template": "vicuna_v1", "tiling": {
                               "mode": "anyres", "grid_pinpoints": [list(p) for p in TINY_PINPOINTS]}}}).model


def _tiling(info):
    return TilingSpec(mode="anyres", tile_size=info.tile_size, grid_pinpoints=info.grid_pinpoints,
                      mean=LLAVA_NEXT.mean, std=LLAVA_NEXT.std)


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_llava_next_directory_is_read_not_refused(base):
    assert detect_layout(base) is Layout.HF_LLAVA_NEXT
    info, _ = model_facts(_spec(base))
    assert info.family == "llava_next" and info.grid_pinpoints == TINY_PINPOINTS
    assert family_of_config({"model_type": "llava_next"}) is LLAVA_NEXT


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("width, height", SIZES)
def test_llava_next_gives_the_official_logits_before_training(base, width, height):
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


def _official_processor(base, info):
    from transformers import AutoTokenizer, LlavaNextImageProcessorPil, LlavaNextProcessor

    side = {"shortest_edge": info.tile_size}
    image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=[list(p) for p in info.grid_pinpoints],
                                                 size=side, crop_size={"height": info.tile_size,
                                                                       "width": info.tile_size},
                                                 image_mean=list(LLAVA_NEXT.mean), image_std=list(LLAVA_NEXT.std))
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(base),
                              patch_size=info.patch_size, vision_feature_select_strategy=info.select_strategy,
                              num_additional_image_tokens=info.prefix_tokens, image_token="<image>")


@pytest.mark.parametrize("width, height", SIZES)
def test_the_image_token_count_and_tiles_are_llava_next_processors(base, width, height):
    info, _ = model_facts(_spec(base))
    processor = _official_processor(base, info)
    image = Image.effect_noise((width, height), 60).convert("RGB")
    out = processor(images=[image], text="<image>", return_tensors="pt")
    official_count = int((out["input_ids"] == info.image_token_id).sum())
    assert info.anyres.token_count((height, width), info.tokens_per_tile) == official_count
    ours = tiles_for_image(image, _tiling(info))
    theirs = out["pixel_values"][0]
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_the_family_counts_tokens_with_llava_next_processors_own_rule(base):
    info, _ = model_facts(_spec(base))
    image_processor, processor, _ = LLAVA_NEXT.processor_files(
        info, _tiling(info), {"size": {"shortest_edge": info.tile_size}, "image_mean": list(LLAVA_NEXT.mean),
                              "image_std": list(LLAVA_NEXT.std)})
    for width, height in SIZES:
        _, count = LLAVA_NEXT.processor_image_tokens(image_processor, processor, Image.new("RGB", (width, height)))
        assert count == info.anyres.token_count((height, width), info.tokens_per_tile)


def test_image_newline_trains_and_is_saved_with_the_connector(base):
    model, _ = build_vlm(_spec(base))
    spec = _spec(base)
    apply_training_policy(model, spec)
    assert model.multi_modal_projector.image_newline.requires_grad
    assert "multi_modal_projector.image_newline" in trained_tensors(model)
    assert float(model.multi_modal_projector.image_newline.detach().abs().sum()) > 0  # the base's, not zeros


@pytest.mark.battery("model-dirs", was="traceback")
def test_an_anyres_model_given_no_image_sizes_is_one_line(base):
    model, _ = build_vlm(_spec(base))
    pixels = torch.zeros(3, 3, model.info.tile_size, model.info.tile_size)
    ids = torch.tensor([[3, *[model.info.image_token_id] * 36]])
    with pytest.raises(ModelInputError, match="image_sizes"):
        model(input_ids=ids, pixel_values=pixels)
    with pytest.raises(ModelInputError, match="AnyRes tiles"):
        model(input_ids=ids, pixel_values=pixels, image_sizes=torch.tensor([[200, 210]]))
