"""LLaVA-NeXT and LLaVA-OneVision through the whole journey: check-data counts the image tokens the official
processor counts, 3 training steps feed image_sizes to the AnyRes packing, merge, and `--to hf --verify`."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.tiny.checkpoints import make_tiny_llava_next_hf, make_tiny_llava_onevision_hf

#: family -> (tiny writer, template, the fields the export must keep as the base had them)
FAMILIES = {
    "llava_next": (make_tiny_llava_next_hf, "vicuna_v1",
                   ("vision_feature_select_strategy", "vision_feature_layer", "image_grid_pinpoints")),
    "llava_onevision": (make_tiny_llava_onevision_hf, "chatml",
                        ("vision_feature_select_strategy", "vision_feature_layer", "image_grid_pinpoints",
                         "vision_aspect_ratio")),
}
#: (width, height) of the training images: wide, tall, large (OneVision shrinks its grid), odd padding.
SIZES = [(100, 60), (60, 100), (200, 210), (97, 33)]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("anyres_bases")
    return {name: writer(root / name) for name, (writer, _, _) in FAMILIES.items()}


def _data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (width, height) in enumerate(SIZES):
        Image.effect_noise((width, height), 60).convert("RGB").save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "noise"}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def _config(tmp_path: Path, base: Path, family: str, **tiling) -> Path:
    sections = {
        "model": {"family": family, "path": str(base), "attn_implementation": "eager",
                  "connector": {"downsample_ratio": 1.0}},
        "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "template": FAMILIES[family][1],
                 "max_length": 512, "tiling": {"mode": "anyres", **tiling}},
        "schedule": {"max_steps": 3, "micro_batch_size": 2, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1, "sample_every": 3, "sample_max_new_tokens": 2,
                   "sample_prompts": [{"image": str(tmp_path / "data" / "0.png"), "prompt": "What is it?"}]},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config


def _official_counts(base: Path) -> list[int]:
    """Image tokens per training image, as the base's own processor (transformers' class) counts them."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    vision = config.vision_config
    pinpoints = config.image_grid_pinpoints
    if config.model_type == "llava_next":
        from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor
        image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints,
                                                     size={"shortest_edge": vision.image_size},
                                                     crop_size={"height": vision.image_size,
                                                                "width": vision.image_size})
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       patch_size=vision.patch_size, num_additional_image_tokens=1,
                                       vision_feature_select_strategy=config.vision_feature_select_strategy)
    else:
        from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
        image_processor = LlavaOnevisionImageProcessorPil(image_grid_pinpoints=pinpoints,
                                                          size={"height": vision.image_size,
                                                                "width": vision.image_size})
        # A whole LlavaOnevisionProcessor needs its video processor (torchvision, not installed): its own
        # image-token expansion runs on an instance holding what that method reads.
        counter = object.__new__(LlavaOnevisionProcessor)
        counter.image_processor, counter.image_token = image_processor, "<image>"
        counter.num_image_tokens = (vision.image_size // vision.patch_size) ** 2
        counter.vision_feature_select_strategy = config.vision_feature_select_strategy
        counter.vision_aspect_ratio = config.vision_aspect_ratio
        counts = []
        for width, height in SIZES:
            inputs = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")
            counts.append(counter.replace_image_token(inputs, 0).count("<image>"))
        return counts
    counts = []
    for width, height in SIZES:
        out = processor(images=[Image.new("RGB", (width, height))], text="<image>", return_tensors="pt")
        counts.append(int((out["input_ids"] == config.image_token_index).sum()))
    return counts


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_check_data_counts_the_official_processors_image_tokens(bases, tmp_path, family):
    from vlft.config import load_config
    from vlft.data.dataset import build_dataset
    from vlft.model.facts import model_facts

    spec = load_config(_config(tmp_path, bases[family], family))
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info, cache=False)
    assert [e.num_image_tokens for e in dataset.encoded] == _official_counts(bases[family])
    item = dataset[2]
    assert item["image_sizes"].tolist() == [[SIZES[2][1], SIZES[2][0]]]
    cached = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "cache")  # the rows training reads
    assert [e.num_image_tokens for e in cached.encoded] == _official_counts(bases[family])
    assert [cached[i]["image_sizes"].tolist() for i in range(len(SIZES))] == [[[h, w]] for w, h in SIZES]


def test_both_collates_carry_every_images_size_in_pixel_order():
    from vlft.data.collate import pack_collate, pad_collate

    def item(n, sizes):
        return {"input_ids": torch.ones(n, dtype=torch.long), "labels": torch.ones(n, dtype=torch.long),
                "pixel_values": torch.zeros(len(sizes), 3, 2, 2), "image_sizes": torch.tensor(sizes).reshape(-1, 2)}

    items = [item(3, [[10, 20]]), item(2, []), item(4, [[30, 40], [50, 60]])]
    want = [[10, 20], [30, 40], [50, 60]]
    assert pad_collate(items, pad_token_id=0)["image_sizes"].tolist() == want
    assert pack_collate([items[:2], items[2:]], pad_token_id=0)["image_sizes"].tolist() == want


def test_a_multi_image_onevision_sample_is_dropped_in_one_line(bases, tmp_path):
    from vlft.config import load_config
    from vlft.data.dataset import build_dataset
    from vlft.model.facts import model_facts

    config = _config(tmp_path, bases["llava_onevision"], "llava_onevision")
    rows = json.loads((tmp_path / "data" / "train.json").read_text())
    rows.append({"id": "two", "image": ["0.png", "1.png"], "conversations": [
        {"from": "human", "value": "<image><image>\nSame?"}, {"from": "gpt", "value": "no"}]})
    (tmp_path / "data" / "train.json").write_text(json.dumps(rows))
    spec = load_config(config)
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info, cache=False)
    assert len(dataset) == len(SIZES)
    assert any(":two:" in p and "multi-image" in p and "one image per sample" in p for p in dataset.stats.problems)


@pytest.mark.parametrize("family", FAMILIES)
def test_pinpoints_other_than_the_models_are_refused_naming_the_key(bases, tmp_path, family):
    config = _config(tmp_path, bases[family], family, grid_pinpoints=[[56, 56], [112, 112]])
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 2, result.output
    assert "data.tiling.grid_pinpoints" in result.output and "image_grid_pinpoints" in result.output


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_check_data_train_merge_and_convert_to_hf_verify(bases, tmp_path, family):
    base = bases[family]
    config = _config(tmp_path, base, family)
    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(config)])
    assert result.exit_code == 0, result.output
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "[sample @ step 3] 'What is it?'" in result.output    # training-time samples count by image size too
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-3"), str(out), "--to", "hf", "--verify",
                                  "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify (hf)" in result.output and "computation fields as the base had them" in result.output
    written, original = (json.loads((d / "config.json").read_text()) for d in (out, base))
    fields = FAMILIES[family][2]
    assert {f: written[f] for f in fields} == {f: original[f] for f in fields}
    assert written["architectures"] == original["architectures"]


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_an_llm_lora_run_exports_to_lora_and_verifies_on_the_official_class(bases, tmp_path, family):
    config = _config(tmp_path, bases[family], family)
    config.write_text(config.read_text().replace("'connector': {'downsample_ratio': 1.0}",
                                                 "'connector': {'downsample_ratio': 1.0, 'train': False}, "
                                                 "'llm': {'train': 'lora'}"))
    runner = CliRunner()
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "lora"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-3"), str(out), "--to", "lora", "--verify"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "vlft_lora.json").read_text())["layout"] == "hf"
    assert (out / "adapter_model.safetensors").is_file()


#: family -> the shipped config a user of that family starts from
SHIPPED = {"llava_next": "llava_next_7b_lora", "llava_onevision": "llava_onevision_0_5b_lora"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shipped_config_trains_on_a_tiny_base_merges_and_converts_to_hf_and_lora(bases, tmp_path, family):
    """The shipped config as a user copies it, only pointed at a tiny base and sized for a CPU; the connector
    is frozen so that the LLM's LoRA alone is the change, which `--to lora` exports."""
    from vlft.shipped import shipped_configs

    data = _data(tmp_path / "data")
    config = shipped_configs()[SHIPPED[family]]
    options = ["--cfg-options", f"model_path={bases[family]}", f"data_path={data}", f"image_root={data.parent}",
               "max_length=512", "lora_r=8", "model.dtype=float32", "model.attn_implementation=eager",
               "model.connector.train=False", "schedule.max_steps=3", "schedule.micro_batch_size=2",
               "schedule.gradient_accumulation=1", "engine.save_steps=3", "engine.logging_steps=1"]
    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(config), *options])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output                       # the config says what the base wants
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none", *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    ckpt = work / "checkpoint-3"
    merged = tmp_path / "merged"
    result = runner.invoke(main, ["merge", str(ckpt), str(merged), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(main, ["convert", str(merged), str(tmp_path / "hf"), "--to", "hf", "--verify",
                                  "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify (hf)" in result.output and "max |Δlogit|" in result.output
    written, original = (json.loads((d / "config.json").read_text()) for d in (tmp_path / "hf", bases[family]))
    assert written["architectures"] == original["architectures"]
    result = runner.invoke(main, ["convert", str(ckpt), str(tmp_path / "lora"), "--to", "lora", "--verify"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify: peft on the official class = merged logits" in result.output
