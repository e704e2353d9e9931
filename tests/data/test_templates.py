"""Chat templates and sample encoding: exact ids/labels per template, agreement with HF apply_chat_template."""
from __future__ import annotations

import dataclasses

import pytest

from vlft.data.encode import (
    INTERNVL_IMAGE_TOKENS, LLAVA_IMAGE_TOKENS, EncodedSample, ImageTokens, SampleError, encode_prompt,
    encode_sample, render_text,
)
from vlft.data.record import Sample, Turn
from vlft.data.templates import TEMPLATES, UnknownTemplateError, get_template
from vlft.tiny.tokenizer import build_tiny_tokenizer

N = 4  # context tokens per image in these tests

# Default system prompts, written out from the references (InternVL conversation.py, LLaVA conversation.py,
# LLaVA-NeXT conv_llava_llama_3, Qwen2's chat template) rather than imported from the code under test.
INTERNVL2_SYS = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYS = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
QWEN_SYS = "You are a helpful assistant."
VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA3_SYS = ("You are a helpful language and vision assistant. You are able to understand the visual content "
              "that the user provides, and assist the user with a variety of tasks using natural language.")

IMG = "IMAGE-RUN"  # marks where the image run goes in an expectation

# template -> (tokenizer family, the two-turn sample written out as (text, trained) pieces)
EXPECTED = {
    "internlm2-chat": ("internvl", [
        ("<s><|im_start|>system\n" + INTERNVL2_SYS + "<|im_end|><|im_start|>user\n", False), IMG,
        ("\nWhat dish is this?<|im_end|><|im_start|>assistant\n", False),
        ("dumplings<|im_end|>", True),
        ("<|im_start|>user\nWhat colour?<|im_end|><|im_start|>assistant\n", False),
        ("red<|im_end|>", True),
    ]),
    "internvl2_5": ("internvl", [
        ("<|im_start|>system\n" + INTERNVL2_5_SYS + "<|im_end|>\n<|im_start|>user\n", False), IMG,
        ("\nWhat dish is this?<|im_end|>\n<|im_start|>assistant\n", False),
        ("dumplings<|im_end|>", True),
        ("\n<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n", False),
        ("red<|im_end|>", True),
        ("\n", False),
    ]),
    "chatml": ("internvl", [
        ("<|im_start|>system\n" + QWEN_SYS + "<|im_end|>\n<|im_start|>user\n", False), IMG,
        ("\nWhat dish is this?<|im_end|>\n<|im_start|>assistant\n", False),
        ("dumplings<|im_end|>", True),
        ("\n<|im_start|>user\nWhat colour?<|im_end|>\n<|im_start|>assistant\n", False),
        ("red<|im_end|>", True),
        ("\n", False),
    ]),
    "vicuna_v1": ("llava", [
        ("<s>" + VICUNA_SYS + " USER: ", False), IMG,
        ("\nWhat dish is this? ASSISTANT:", False),
        (" dumplings</s>", True),
        ("USER: What colour? ASSISTANT:", False),
        (" red</s>", True),
    ]),
    "llama3": ("llava", [
        ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYS
         + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n", False), IMG,
        ("\nWhat dish is this?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("dumplings<|eot_id|>", True),
        ("<|start_header_id|>user<|end_header_id|>\n\nWhat colour?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", False),
        ("red<|eot_id|>", True),
    ]),
    "plain": ("llava", [IMG, ("dumplings\nred\n", True)]),
}
CHAT_TEMPLATES = ["internvl2_5", "internlm2-chat", "chatml", "vicuna_v1", "llama3"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("tok")
        yield {
            "internvl": build_tiny_tokenizer(root / "internvl", family="internvl", chat_style="chatml"),
            "llava": build_tiny_tokenizer(root / "llava", family="llava", chat_style="llama"),
        }


def image_tokens_for(family: str) -> ImageTokens:
    return INTERNVL_IMAGE_TOKENS if family == "internvl" else LLAVA_IMAGE_TOKENS


def make_sample(turns, images=("dish.jpg",), id="7") -> Sample:
    return Sample(id=id, source="food.jsonl", dataset="food", turns=tuple(Turn(r, t) for r, t in turns),
                  images=tuple(images))


TWO_TURNS = [("user", "<image>\nWhat dish is this?"), ("assistant", "dumplings"),
             ("user", "What colour?"), ("assistant", "red")]


def image_run(tok, family: str, n: int) -> list[int]:
    if family == "internvl":
        return tok.convert_tokens_to_ids(["<img>"] + ["<IMG_CONTEXT>"] * n + ["</img>"])
    return tok.convert_tokens_to_ids(["<image>"] * n)


def build_expected(tok, family: str, parts, n: int = N):
    """Join the literal pieces: each text piece tokenized on its own, the image run from token ids."""
    ids, labels, spans = [], [], []
    for part in parts:
        if part == IMG:
            run = image_run(tok, family, n)
            spans.append((len(ids), len(ids) + len(run)))
            ids += run
            labels += [-100] * len(run)
        else:
            text, trained = part
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [-100] * len(piece)
    return ids, labels, tuple(spans)


def expand(tok, family: str, ids: list[int], n: int = N, mask: list[int] | None = None):
    """What transformers' processor does to the placeholder, applied to ids (and an aligned mask)."""
    placeholder = tok.convert_tokens_to_ids("<IMG_CONTEXT>" if family == "internvl" else "<image>")
    out_ids, out_mask = [], []
    for i, token_id in enumerate(ids):
        if token_id == placeholder:
            run = image_run(tok, family, n)
            out_ids += run
            out_mask += [0] * len(run)
        else:
            out_ids.append(token_id)
            out_mask.append(mask[i] if mask is not None else 0)
    return out_ids, out_mask


def block_messages(turns):
    """OpenAI-style content blocks for a conversation written with "<image>\\n" placeholders."""
    messages = []
    for role, text in turns:
        blocks = []
        while "<image>" in text:
            before, _, text = text.partition("<image>")
            if before:
                blocks.append({"type": "text", "text": before})
            blocks.append({"type": "image"})
            text = text.removeprefix("\n")  # the image block renders its own "\n"
        if text:
            blocks.append({"type": "text", "text": text})
        messages.append({"role": role, "content": blocks})
    return messages


# ---------------------------------------------------------------- exact ids per template

@pytest.mark.parametrize("name", list(EXPECTED))
def test_two_turn_sample_exact_ids_and_labels(tokenizers, name):
    family, parts = EXPECTED[name]
    tok = tokenizers[family]
    want_ids, want_labels, want_spans = build_expected(tok, family, parts)
    # the pieces are cut where the tokenizer itself splits, so joining them equals tokenizing the whole text
    text = "".join("<image>" if p == IMG else p[0] for p in parts)
    placeholder = "<IMG_CONTEXT>" if family == "internvl" else "<image>"
    whole = tok(text.replace("<image>", placeholder), add_special_tokens=False)["input_ids"]
    assert expand(tok, family, whole)[0] == want_ids

    got = encode_sample(make_sample(TWO_TURNS), tok, get_template(name),
                        image_tokens=image_tokens_for(family), tokens_per_image=[N])
    assert isinstance(got, EncodedSample)
    assert got.input_ids == want_ids
    assert got.labels == want_labels
    assert got.image_spans == want_spans
    assert got.num_image_tokens == N
    assert render_text(make_sample(TWO_TURNS).turns, get_template(name)) == text


def test_plain_with_internvl_image_tokens(tokenizers):
    tok = tokenizers["internvl"]
    want_ids, want_labels, want_spans = build_expected(tok, "internvl", [IMG, ("dumplings\nred\n", True)])
    got = encode_sample(make_sample(TWO_TURNS), tok, get_template("plain"),
                        image_tokens=INTERNVL_IMAGE_TOKENS, tokens_per_image=[N])
    assert (got.input_ids, got.labels, got.image_spans) == (want_ids, want_labels, want_spans)


# ---------------------------------------------------------------- agreement with apply_chat_template

@pytest.mark.parametrize("name", CHAT_TEMPLATES + ["plain"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_ids_match_hf_apply_chat_template(tokenizers, name, generation_prompt):
    family = EXPECTED[name][0]
    tok, template = tokenizers[family], get_template(name)
    turns = TWO_TURNS[:-1] if generation_prompt else TWO_TURNS
    hf = tok.apply_chat_template(block_messages(turns), chat_template=template.jinja, tokenize=True,
                                 add_generation_prompt=generation_prompt, return_dict=False)
    hf_ids, _ = expand(tok, family, list(hf))
    sample_turns = make_sample(turns).turns
    if generation_prompt:
        ours = encode_prompt(sample_turns, tok, template, image_tokens=image_tokens_for(family),
                             tokens_per_image=[N])
    else:
        ours = encode_sample(make_sample(turns), tok, template, image_tokens=image_tokens_for(family),
                             tokens_per_image=[N]).input_ids
    assert ours == hf_ids
    # string content with "<image>" placeholders renders the same as content blocks
    string_messages = [{"role": r, "content": t} for r, t in turns]
    hf_text = tok.apply_chat_template(string_messages, chat_template=template.jinja, tokenize=False,
                                      add_generation_prompt=generation_prompt)
    assert hf_text == tok.apply_chat_template(block_messages(turns), chat_template=template.jinja,
                                              tokenize=False, add_generation_prompt=generation_prompt)
    # and the processor's text-level expansion gives the same ids as expanding ids
    if family == "internvl":
        expanded = hf_text.replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * N + "</img>")
    else:
        expanded = hf_text.replace("<image>", "<image>" * N)
    assert tok(expanded, add_special_tokens=False)["input_ids"] == ours


@pytest.mark.parametrize("name", CHAT_TEMPLATES + ["plain"])
def test_hf_assistant_mask_matches_labels(tokenizers, name):
    family = EXPECTED[name][0]
    tok, template = tokenizers[family], get_template(name)
    out = tok.apply_chat_template(block_messages(TWO_TURNS), chat_template=template.jinja,
                                  return_dict=True, return_assistant_tokens_mask=True)
    _, mask = expand(tok, family, out["input_ids"], mask=out["assistant_masks"])
    got = encode_sample(make_sample(TWO_TURNS), tok, template, image_tokens=image_tokens_for(family),
                        tokens_per_image=[N])
    assert [int(label != -100) for label in got.labels] == mask


@pytest.mark.parametrize("name", list(EXPECTED))
def test_prompt_is_a_prefix_of_the_training_ids(tokenizers, name):
    family = EXPECTED[name][0]
    tok, template = tokenizers[family], get_template(name)
    kw = dict(image_tokens=image_tokens_for(family), tokens_per_image=[N])
    full = encode_sample(make_sample(TWO_TURNS), tok, template, **kw)
    prompt = encode_prompt(make_sample(TWO_TURNS[:-1]).turns, tok, template, **kw)
    assert full.input_ids[:len(prompt)] == prompt
    assert full.labels[len(prompt)] != -100  # the first token after the prompt is trained


# ---------------------------------------------------------------- labels and image spans

LABELLED_TEXT = {
    "internlm2-chat": ["dumplings<|im_end|>", "red<|im_end|>"],
    "internvl2_5": ["dumplings<|im_end|>", "red<|im_end|>"],
    "chatml": ["dumplings<|im_end|>", "red<|im_end|>"],
    "vicuna_v1": [" dumplings</s>", " red</s>"],
    "llama3": ["dumplings<|eot_id|>", "red<|eot_id|>"],
    "plain": ["dumplings\nred\n"],
}


@pytest.mark.parametrize("name", list(LABELLED_TEXT))
def test_only_replies_and_end_of_turn_are_labelled(tokenizers, name):
    family = EXPECTED[name][0]
    tok = tokenizers[family]
    got = encode_sample(make_sample(TWO_TURNS), tok, get_template(name), image_tokens=image_tokens_for(family),
                        tokens_per_image=[N])
    runs, current = [], []
    for token_id, label in zip(got.input_ids, got.labels):
        if label != -100:
            assert label == token_id
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [tok.decode(run) for run in runs] == LABELLED_TEXT[name]


def test_image_spans_with_several_images(tokenizers):
    tok = tokenizers["internvl"]
    sample = make_sample([("user", "<image>\n<image>\nCompare."), ("assistant", "same"),
                          ("user", "And <image>?"), ("assistant", "no")], images=("a.jpg", "b.jpg", "c.jpg"))
    got = encode_sample(sample, tok, get_template("internvl2_5"), image_tokens=INTERNVL_IMAGE_TOKENS,
                        tokens_per_image=[2, 5, 3])
    assert got.num_image_tokens == 10
    assert len(got.image_spans) == 3
    for (start, end), n in zip(got.image_spans, [2, 5, 3]):
        assert got.input_ids[start:end] == image_run(tok, "internvl", n)
        assert set(got.labels[start:end]) == {-100}
    assert got.input_ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 10

    llava = tokenizers["llava"]
    got = encode_sample(sample, llava, get_template("vicuna_v1"), image_tokens=LLAVA_IMAGE_TOKENS,
                        tokens_per_image=[2, 5, 3])
    assert [end - start for start, end in got.image_spans] == [2, 5, 3]
    image_id = llava.convert_tokens_to_ids("<image>")
    assert [i for i, t in enumerate(got.input_ids) if t == image_id] == [
        i for start, end in got.image_spans for i in range(start, end)]


def test_a_huge_image_run_is_built_from_ids(tokenizers):
    tok = tokenizers["internvl"]
    got = encode_sample(make_sample(TWO_TURNS), tok, get_template("internvl2_5"),
                        image_tokens=INTERNVL_IMAGE_TOKENS, tokens_per_image=[256 * 13])
    (start, end), = got.image_spans
    assert end - start == 256 * 13 + 2


def test_system_prompt_precedence():
    chatml = get_template("chatml")
    turns = make_sample(TWO_TURNS[:2]).turns
    assert render_text(turns, chatml).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert render_text(turns, chatml, system_prompt="Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert render_text(turns, chatml, system_prompt="").startswith("<|im_start|>user\n")
    own = (Turn("system", "Name dishes."),) + turns
    assert render_text(own, chatml, system_prompt="Be brief.").startswith(
        "<|im_start|>system\nName dishes.<|im_end|>\n")
    assert render_text(turns, chatml, add_generation_prompt=True).endswith(
        "dumplings<|im_end|>\n<|im_start|>assistant\n")


def test_sample_system_turn_matches_jinja(tokenizers):
    tok, template = tokenizers["llava"], get_template("llama3")
    turns = [("system", "Name dishes."), ("user", "What dish?"), ("assistant", "soup")]
    ours = encode_sample(make_sample(turns, images=()), tok, template, image_tokens=LLAVA_IMAGE_TOKENS,
                         tokens_per_image=[]).input_ids
    hf = tok.apply_chat_template([{"role": r, "content": t} for r, t in turns], chat_template=template.jinja,
                                 return_dict=False)
    assert ours == list(hf)
    # a text-only conversation needs no image tokens in the tokenizer
    encode_sample(make_sample(turns, images=()), tok, template, image_tokens=INTERNVL_IMAGE_TOKENS,
                  tokens_per_image=[])


def test_replace_rebuilds_jinja():
    plain = get_template("plain")
    internvl_plain = dataclasses.replace(plain, image_placeholder="<IMG_CONTEXT>")
    assert "<IMG_CONTEXT>" in internvl_plain.jinja and "<IMG_CONTEXT>" not in plain.jinja


# ---------------------------------------------------------------- errors

BAD_SAMPLES = {
    "two placeholders, one image": ([("user", "<image><image>\nWhat?"), ("assistant", "soup")],
                                    "food.jsonl:7: 2 <image> placeholders but 1 image"),
    "no placeholder, one image": ([("user", "What?"), ("assistant", "soup")],
                                  "food.jsonl:7: 0 <image> placeholders but 1 image"),
    "no assistant turn": ([("user", "<image>\nWhat?")], "no assistant turn"),
    "empty conversation": ([], "empty conversation"),
    "unknown role": ([("human", "<image>\nWhat?"), ("gpt", "soup")], "role 'human'"),
    "assistant with an image": ([("user", "<image>\nWhat?"), ("assistant", "<image> soup")],
                                "images belong in user turns"),
    "late system turn": ([("user", "<image>\nWhat?"), ("system", "x"), ("assistant", "soup")],
                         "only the first turn"),
    "literal image token": ([("user", "<image>\nWhat is <IMG_CONTEXT>?"), ("assistant", "soup")],
                            "<IMG_CONTEXT> literally"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_samples_name_their_source(tokenizers, case):
    turns, message = BAD_SAMPLES[case]
    with pytest.raises(SampleError, match="^food.jsonl:7: ") as err:
        encode_sample(make_sample(turns), tokenizers["internvl"], get_template("internvl2_5"),
                      image_tokens=INTERNVL_IMAGE_TOKENS, tokens_per_image=[N])
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_template_suggests_nearest():
    with pytest.raises(UnknownTemplateError) as err:
        get_template("internvl2.5")
    assert isinstance(err.value, KeyError)
    message = str(err.value)
    assert "did you mean 'internvl2_5'" in message
    for name in TEMPLATES:
        assert name in message
    with pytest.raises(KeyError, match="did you mean 'vicuna_v1'"):
        get_template("vicuna")


def test_image_tokens_need_both_ends_of_a_wrapped_run_or_neither():
    with pytest.raises(ValueError, match="start_token and end_token"):
        ImageTokens("<IMG_CONTEXT>", "<img>", None)
    assert ImageTokens("<IMG_CONTEXT>", "<img>", "</img>").wraps and not ImageTokens("<image>").wraps
