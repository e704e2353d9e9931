"""InternVL's phi3-chat and Hermes-2 templates: vlft's prompt ids equal InternVL's own construction."""
from __future__ import annotations

import pytest

from vlft.data.encode import INTERNVL_IMAGE_TOKENS, encode_prompt, encode_sample
from vlft.data.record import Sample, Turn
from vlft.data.templates import get_template
from vlft.model.load import load_tokenizer
from vlft.tiny.checkpoints import make_tiny_internvl_chat

SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
# conversation.py: (system_template, roles, sep), all SeparatorStyle.MPT
INTERNVL_CONVERSATIONS = {
    "Hermes-2": ("<|im_start|>system\n{system_message}", ("<|im_start|>user\n", "<|im_start|>assistant\n"),
                 "<|im_end|>"),
    "phi3-chat": ("<|system|>\n{system_message}", ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
}
# preprocess_phi3 counts a tokenizer-added <s> (Phi-3's LlamaTokenizer); preprocess_mpt none.
INTERNVL_BOS = {"Hermes-2": "", "phi3-chat": "<s>"}


def internvl_mpt_prompt(name: str, messages: list[tuple[int, str | None]]) -> str:
    """Conversation.get_prompt for SeparatorStyle.MPT: system + sep, then role + message + sep, or the role alone."""
    system_template, roles, sep = INTERNVL_CONVERSATIONS[name]
    ret = system_template.format(system_message=SYSTEM) + sep
    for role, message in messages:
        ret += roles[role] + message + sep if message else roles[role]
    return ret


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    return {"Hermes-2": load_tokenizer(make_tiny_internvl_chat(root / "llama3", llm="llama3")),
            "phi3-chat": load_tokenizer(make_tiny_internvl_chat(root / "phi3", llm="phi3"))}


def _internvl_ids(tokenizer, name: str, text: str, tokens_per_image: int) -> list[int]:
    image = f"<img>{'<IMG_CONTEXT>' * tokens_per_image}</img>"
    return tokenizer(INTERNVL_BOS[name] + text.replace("<image>", image), add_special_tokens=False).input_ids


@pytest.mark.parametrize("name", ["Hermes-2", "phi3-chat"])
def test_prompt_ids_match_internvl_template_construction(tokenizers, name):
    tokenizer, template = tokenizers[name], get_template(name)
    turns = [Turn("user", "<image>\nwhat dish is this?"), Turn("assistant", "dumplings"),
             Turn("user", "what color?")]
    ours = encode_prompt(turns, tokenizer, template, image_tokens=INTERNVL_IMAGE_TOKENS, tokens_per_image=[4])
    theirs = internvl_mpt_prompt(name, [(0, turns[0].text), (1, "dumplings"), (0, "what color?"), (1, None)])
    assert ours == _internvl_ids(tokenizer, name, theirs, 4)


@pytest.mark.parametrize("name", ["Hermes-2", "phi3-chat"])
def test_training_ids_match_and_the_reply_with_its_end_token_is_trained(tokenizers, name):
    tokenizer, template = tokenizers[name], get_template(name)
    sample = Sample(id="s0", source="t.jsonl", dataset="t", turns=(Turn("user", "what?"), Turn("assistant", "soup")))
    encoded = encode_sample(sample, tokenizer, template, image_tokens=INTERNVL_IMAGE_TOKENS, tokens_per_image=[])
    internvl_text = internvl_mpt_prompt(name, [(0, "what?"), (1, "soup")])
    assert encoded.input_ids == _internvl_ids(tokenizer, name, internvl_text, 0)
    trained = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    end = INTERNVL_CONVERSATIONS[name][2]
    assert tokenizer.decode(trained) == "soup" + end
    assert template.stop_words[0] == end  # InternVL's chat() stops on the template's sep
