"""The files a server reads (tokenizer specials, chat template) and `--to lora` adapters a server applies."""
from __future__ import annotations

import json

import pytest
import torch

from tests.export.conftest import build_train_checkpoint

QUESTION = "What is shown in this image?"


@pytest.fixture(scope="module")
def frozen_connector_ckpt(tmp_path_factory, tiny_base):
    """name -> a LoRA-only checkpoint (connector frozen) on that tiny base, built on first use."""
    root, made = tmp_path_factory.mktemp("serving_ckpts"), {}
    templates = {"internvl_hf": "internvl2_5", "chat_internlm2": "internlm2-chat", "chat_qwen2": "internvl2_5"}

    def get(name):
        if name not in made:
            made[name] = build_train_checkpoint(tiny_base(name), root / name, family="internvl",
                                                template=templates[name], model={"connector": {"train": False}},
                                                data={"tiling": {"max_tiles": 4}})
        return made[name]

    return get


@pytest.mark.parametrize("name", ["internvl_lora", "chat_internlm2_lora", "chat_qwen2_lora"])
def test_the_hf_export_tokenizer_names_every_token_internvl_processor_reads(name, train_ckpt, tmp_path):
    from transformers import AutoTokenizer

    from vlft.export import convert_checkpoint

    out = convert_checkpoint(train_ckpt(name), tmp_path / "hf", target="hf", verify=False, dtype="fp32",
                             log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for attribute, token in {"start_image_token": "<img>", "end_image_token": "</img>",
                             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}.items():
        assert getattr(tokenizer, attribute) == token
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id


@pytest.mark.battery("packaging", was="traceback")
def test_a_base_tokenizer_without_a_video_token_still_gets_one_named(tiny_base, tmp_path):
    """InternVL2-2B's tokenizer has no <video>; InternVLProcessor fails on a tokenizer without video_token."""
    import shutil

    from transformers import AutoTokenizer

    from vlft.export import convert_checkpoint
    from vlft.tiny.tokenizer import build_tiny_tokenizer

    base = tmp_path / "base"
    shutil.copytree(tiny_base("chat_internlm2"), base)
    tokenizer = build_tiny_tokenizer(tmp_path / "tok", family="text", chat_style="chatml")
    tokenizer.add_tokens(["<img>", "</img>", "<IMG_CONTEXT>"], special_tokens=True)
    tokenizer.save_pretrained(base)
    assert "<video>" not in tokenizer.get_vocab()
    ckpt = build_train_checkpoint(base, tmp_path / "ckpt", family="internvl", template="internlm2-chat")
    out = convert_checkpoint(ckpt, tmp_path / "hf", target="hf", verify=False, dtype="fp32", log=lambda _: None)
    exported = AutoTokenizer.from_pretrained(out)
    assert exported.video_token == "<video>"
    assert exported.convert_tokens_to_ids("<video>") == len(tokenizer)  # added after every trained id
    assert exported.convert_tokens_to_ids("<IMG_CONTEXT>") == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")


def _chat_style_prompt_ids(tokenizer, text: str, tokens_per_image: int) -> list[int]:
    """InternVL's `chat`: each "<image>" of the rendered prompt becomes <img> + <IMG_CONTEXT>*n + </img>."""
    text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * tokens_per_image + "</img>", 1)
    return tokenizer(text, add_special_tokens=not text.startswith(tokenizer.bos_token or "\0"))["input_ids"]


@pytest.mark.battery("packaging", was="silent")
@pytest.mark.parametrize("name", ["chat_internlm2_lora", "chat_qwen2_lora"])
def test_the_internvl_chat_template_writes_image_and_rebuilds_the_training_ids(name, train_ckpt, tmp_path):
    from transformers import AutoTokenizer

    from vlft.data.dataset import pipeline_from_spec
    from vlft.data.encode import encode_prompt
    from vlft.data.record import IMAGE_PLACEHOLDER, Turn
    from vlft.export import convert_checkpoint
    from vlft.export.merge import load_for_export

    out = convert_checkpoint(train_ckpt(name), tmp_path / "chat", target="internvl-chat", verify=False,
                             dtype="fp32", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(out)
    blocks = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = tokenizer.apply_chat_template(blocks, add_generation_prompt=True, tokenize=False)
    assert "<image>\n" + QUESTION in text and "<IMG_CONTEXT>" not in text
    string = [{"role": "user", "content": f"<image>\n{QUESTION}"}]
    assert tokenizer.apply_chat_template(string, add_generation_prompt=True, tokenize=False) == text

    merged = load_for_export(train_ckpt(name))
    pipeline = pipeline_from_spec(merged.spec, merged.tokenizer, merged.info)
    n = 3 * pipeline.tokens_per_tile
    want = encode_prompt([Turn("user", f"{IMAGE_PLACEHOLDER}\n{QUESTION}")], merged.tokenizer, pipeline.template,
                         image_tokens=pipeline.image_tokens, tokens_per_image=[n],
                         system_prompt=pipeline.system_prompt)
    assert _chat_style_prompt_ids(tokenizer, text, n) == want


def test_the_internvl_chat_export_keeps_auto_map_for_the_remote_code(train_ckpt, tmp_path):
    from vlft.export import convert_checkpoint

    out = convert_checkpoint(train_ckpt("internvl_lora"), tmp_path / "chat", target="internvl-chat", verify=False,
                             dtype="fp32", log=lambda _: None)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_internvl_chat.InternVLChatConfig"


def test_the_missing_remote_code_line_names_the_files_and_the_opengvlab_repository():
    from vlft.export.hf_files import missing_remote_code_line

    line = missing_remote_code_line("qwen2", "/cache/models--OpenGVLab--InternVL3-1B-hf/snapshots/abc")
    assert "OpenGVLab/InternVL3-1B" in line and "-hf" not in line.split("OpenGVLab/InternVL3-1B")[1][:3]
    assert "modeling_internvl_chat.py" in line and "configuration_internvl_chat.py" in line and "\n" not in line
    assert "modeling_internlm2.py" in missing_remote_code_line("internlm2", "/somewhere/my-base")


# ------------------------------------------------------------------------------------------------
# --to lora


@pytest.mark.battery("checkpoints", was="silent")
def test_lora_export_is_refused_in_one_line_when_the_connector_trained(train_ckpt, tmp_path):
    from vlft.errors import CheckpointError
    from vlft.export.target_lora import export_lora

    with pytest.raises(CheckpointError) as error:
        export_lora(train_ckpt("chat_internlm2_lora"), tmp_path / "lora", log=lambda _: None)
    message = str(error.value)
    assert "connector" in message and "--to hf" in message and "model.connector.train=False" in message
    assert "\n" not in message and not (tmp_path / "lora").exists()


def test_the_lora_adapter_on_the_official_class_gives_the_merged_logits(frozen_connector_ckpt, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlft.export.target_lora import export_lora
    from vlft.export.merge import merge_training_checkpoint
    from vlft.export.verify import training_prompt

    ckpt = frozen_connector_ckpt("internvl_hf")
    result = export_lora(ckpt, tmp_path / "lora", log=lambda _: None)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None
    assert all(name.startswith("model.language_model.layers.") for name in config["target_modules"])
    assert result.max_abs_logit_diff is not None and result.max_abs_logit_diff <= 1e-5

    # The same check, by hand: the base + peft, against the merged model.
    merged = merge_training_checkpoint(ckpt)
    prompt = training_prompt(merged.spec, merged.tokenizer, merged.info)
    ids = torch.tensor([prompt.input_ids])
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32,
                                                       attn_implementation="eager")
    with torch.no_grad():
        plain = base(input_ids=ids, pixel_values=prompt.pixel_values).logits
        served = PeftModel.from_pretrained(base, tmp_path / "lora").eval()(input_ids=ids,
                                                                            pixel_values=prompt.pixel_values).logits
        want = merged.model.float().eval()(input_ids=ids, pixel_values=prompt.pixel_values).logits
    assert float((served - want).abs().max()) <= 1e-5
    assert float((plain - want).abs().max()) > 1e-3  # the adapter does something


@pytest.mark.parametrize("name", ["chat_internlm2", "chat_qwen2"])
def test_the_lora_adapter_of_an_internvl_chat_base_uses_its_own_module_names(name, frozen_connector_ckpt, tmp_path):
    from safetensors.torch import load_file

    from vlft.export.target_lora import export_lora

    result = export_lora(frozen_connector_ckpt(name), tmp_path / "lora", log=lambda _: None)
    assert result.max_abs_weight_diff is not None and result.max_abs_weight_diff <= 1e-5
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    names = set(config["target_modules"])
    if name == "chat_internlm2":
        assert "language_model.model.layers.0.attention.wqkv" in names
        assert "language_model.model.layers.0.feed_forward.w2" in names
        assert not any("q_proj" in n for n in names)
    else:
        assert "language_model.model.layers.0.self_attn.q_proj" in names
    tensors = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {config["r"]}
