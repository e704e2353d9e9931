"""The chat templates: how a conversation is written out as text, once for training and once as Jinja.

Each ``ChatTemplate`` is a handful of literal pieces. ``vlft.data.encode`` joins them into training ids and
labels; ``ChatTemplate.jinja`` is the same text as a Jinja template for HF ``apply_chat_template`` (written
into converted checkpoints), so what a model is trained on and what it is prompted with at inference match.

A conversation renders as::

    bos + system.format(system) + for each turn:
        user:       user.format(content)
        assistant:  assistant_header + [reply_prefix + reply + end_of_turn] + separator
    + assistant_header                                   (the generation prompt, when asked for)

Only the bracketed part of an assistant turn is trained. ``reply_prefix`` exists for Vicuna, whose prompt
ends with ``"ASSISTANT:"`` while the reply is written ``" answer"``: the space belongs to the reply's first
token, so the generation prompt must stop before it.

Sources of the pieces: InternVL ``internvl_chat/internvl/conversation.py`` (``internlm2-chat``,
``internvl2_5``, ``Hermes-2``, ``phi3-chat``) and its ``preprocess_internlm`` / ``preprocess_internvl2_5`` /
``preprocess_mpt`` / ``preprocess_phi3`` for BOS and label spans;
LLaVA ``llava/conversation.py`` (``conv_vicuna_v1``, ``conv_llava_plain``) and ``preprocess_plain``;
LLaVA-NeXT ``conv_llava_llama_3``; Qwen2's chat template for ``chatml``.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field

from vlft.families import INTERNVL, LLAVA

from .record import IMAGE_PLACEHOLDER

INTERNVL_IMAGE_PLACEHOLDER = INTERNVL.image_placeholder  # transformers' InternVLProcessor expands this one
LLAVA_IMAGE_PLACEHOLDER = LLAVA.image_placeholder        # transformers' LlavaProcessor expands this one


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format, as literal pieces (see the module docstring for how they join).

    ``jinja`` is derived from the other fields; ``dataclasses.replace`` rebuilds it, e.g.
    ``replace(get_template("plain"), image_placeholder="<IMG_CONTEXT>")`` for InternVL stage-1 captions.
    """

    name: str
    user: str                     # wraps a user turn; contains "{content}"
    assistant_header: str         # opens an assistant turn; also the generation prompt; never trained
    end_of_turn: str              # closes a reply; trained (the model must learn to stop)
    system: str = ""              # wraps the system prompt; contains "{system}"; "" = no system turn
    default_system: str = ""      # used when neither the sample nor the caller gives a system prompt
    reply_prefix: str = ""        # trained text between the header and the reply (Vicuna's " ")
    separator: str = ""           # after end_of_turn; not trained (InternVL2.5 masks its "\n")
    stop_words: tuple[str, ...] = ()  # strings that end generation
    bos: str = ""                 # written literally at the very start ("" = none)
    user_text: bool = True        # False (plain): a user turn contributes only its images
    image_placeholder: str = INTERNVL_IMAGE_PLACEHOLDER  # what Jinja writes for an image
    image_newline: bool = True    # Jinja writes image_placeholder + "\n" for an image content block
    jinja: str = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.user.count("{content}") != 1:
            raise ValueError(f"template {self.name!r}: user must contain '{{content}}' once, got {self.user!r}")
        if self.system and self.system.count("{system}") != 1:
            raise ValueError(f"template {self.name!r}: system must contain '{{system}}' once, got {self.system!r}")
        object.__setattr__(self, "jinja", _build_jinja(self))

    def wrap_user(self, content: str) -> str:
        before, _, after = self.user.partition("{content}")
        return before + content + after

    def wrap_system(self, system: str) -> str:
        before, _, after = self.system.partition("{system}")
        return before + system + after


class UnknownTemplateError(KeyError):
    """A template name that is not registered; the message lists the names and the nearest one."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _lit(text: str) -> str:
    """A Jinja string literal for ``text`` (Jinja unescapes \\n, \\" and \\uXXXX like JSON)."""
    return json.dumps(text, ensure_ascii=False)


def _build_jinja(t: ChatTemplate) -> str:
    """The Jinja template that renders the same text as ``vlft.data.encode.render_text``.

    Message content is a string (``"<image>"`` placeholders become ``image_placeholder``) or OpenAI-style
    blocks (``{"type": "image"}`` -> the placeholder, ``{"type": "text", "text": ...}`` -> the text).
    Replies are wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask`` marks what vlft trains.
    """
    image = t.image_placeholder + ("\n" if t.image_newline else "")
    if t.user_text:
        user_string = f"content | replace({_lit(IMAGE_PLACEHOLDER)}, {_lit(t.image_placeholder)})"
    else:  # plain: keep the images, drop the words (LLaVA's preprocess_plain)
        user_string = f"{_lit(t.image_placeholder)} * content.count({_lit(IMAGE_PLACEHOLDER)})"
    user_before, _, user_after = t.user.partition("{content}")
    sys_before, _, sys_after = t.system.partition("{system}")
    parts = [
        "{%- macro render(content, role) -%}",
        "{%- if content is string -%}",
        f"{{%- if role == 'user' -%}}{{{{- {user_string} -}}}}{{%- else -%}}{{{{- content -}}}}{{%- endif -%}}",
        "{%- else -%}{%- for block in content -%}",
        f"{{%- if block.type == 'image' -%}}{{{{- {_lit(image)} -}}}}",
        "{%- elif block.type == 'text'" + ("" if t.user_text else " and role != 'user'") + " -%}",
        "{{- block.text -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{%- endmacro -%}",
        "{%- if messages and messages[0].role == 'system' -%}",
        "{%- set system = render(messages[0].content, 'system') -%}{%- set turns = messages[1:] -%}",
        f"{{%- else -%}}{{%- set system = {_lit(t.default_system)} -%}}{{%- set turns = messages -%}}",
        "{%- endif -%}",
    ]
    if t.bos:
        parts.append(f"{{{{- {_lit(t.bos)} -}}}}")
    if t.system:
        system_text = f"{_lit(sys_before)} + system + {_lit(sys_after)}"
        parts.append(f"{{%- if system -%}}{{{{- {system_text} -}}}}{{%- endif -%}}")
    parts += [
        "{%- for message in turns -%}",
        "{%- if message.role == 'user' -%}",
        f"{{{{- {_lit(user_before)} + render(message.content, 'user') + {_lit(user_after)} -}}}}",
        "{%- elif message.role == 'assistant' -%}",
        f"{{{{- {_lit(t.assistant_header)} -}}}}",
        "{%- generation -%}",
        f"{{{{- {_lit(t.reply_prefix)} + render(message.content, 'assistant') + {_lit(t.end_of_turn)} -}}}}",
        "{%- endgeneration -%}",
        f"{{{{- {_lit(t.separator)} -}}}}",
        "{%- else -%}",
        "{{- raise_exception('roles must be user or assistant after an optional first system message') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{- {_lit(t.assistant_header)} -}}}}{{%- endif -%}}",
    ]
    return "\n".join(parts)


_INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
_INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_LLAMA3_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the "
                        "visual content that the user provides, and assist the user with a variety of tasks "
                        "using natural language.")


def _chatml(name: str, default_system: str, *, separator: str, bos: str = "",
            stop_words: tuple[str, ...] = ("<|im_end|>",)) -> ChatTemplate:
    # The separator after <|im_end|> ends every turn; only the assistant's is split off (and masked).
    return ChatTemplate(
        name=name,
        system="<|im_start|>system\n{system}<|im_end|>" + separator,
        default_system=default_system,
        user="<|im_start|>user\n{content}<|im_end|>" + separator,
        assistant_header="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        separator=separator,
        stop_words=stop_words,
        bos=bos,
    )


TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (
    # InternVL2 on InternLM2 (e.g. InternVL2-2B/8B): MPT style, nothing after <|im_end|>; the InternLM2
    # tokenizer adds <s> (InternVL's preprocess_internlm masks it as "<s>").
    _chatml("internlm2-chat", _INTERNVL2_SYSTEM, separator="", bos="<s>"),
    # InternVL2.5 / 3 on Qwen2.5: "<|im_end|>\n"; preprocess_internvl2_5 trains "<|im_end|>", masks the "\n".
    _chatml("internvl2_5", _INTERNVL2_5_SYSTEM, separator="\n", stop_words=("<|im_end|>", "<|endoftext|>")),
    # InternVL2 on Llama-3 (InternVL2-Llama3-76B): internlm2-chat without the BOS; InternVL's preprocess_mpt
    # tokenizes without one. conversation.py's stop_str "<|endoftext|>" also ends a reply.
    _chatml("Hermes-2", _INTERNVL2_SYSTEM, separator="", stop_words=("<|im_end|>", "<|endoftext|>")),
    # InternVL2 on Phi-3 (InternVL2-4B): conversation.py's phi3-chat, MPT style (role + message + "<|end|>",
    # nothing between turns); the Phi-3 tokenizer adds <s>, which preprocess_phi3 masks.
    ChatTemplate(
        name="phi3-chat",
        system="<|system|>\n{system}<|end|>",
        default_system=_INTERNVL2_SYSTEM,
        user="<|user|>\n{content}<|end|>",
        assistant_header="<|assistant|>\n",
        end_of_turn="<|end|>",
        stop_words=("<|end|>",),
        bos="<s>",
    ),
    # Plain Qwen-style chatml with Qwen's neutral default system prompt.
    _chatml("chatml", "You are a helpful assistant.", separator="\n", stop_words=("<|im_end|>", "<|endoftext|>")),
    # LLaVA-1.5 (conv_vicuna_v1, SeparatorStyle.TWO, sep=" ", sep2="</s>"); the Llama tokenizer adds <s>.
    ChatTemplate(
        name="vicuna_v1",
        system="{system} ",
        default_system=_VICUNA_SYSTEM,
        user="USER: {content} ",
        assistant_header="ASSISTANT:",
        reply_prefix=" ",
        end_of_turn="</s>",
        stop_words=("</s>",),
        bos="<s>",
        image_placeholder=LLAVA_IMAGE_PLACEHOLDER,
    ),
    # Llama-3 instruct format with LLaVA-NeXT's conv_llava_llama_3 system prompt.
    ChatTemplate(
        name="llama3",
        system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        default_system=_LLAVA_LLAMA3_SYSTEM,
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
        stop_words=("<|eot_id|>",),
        bos="<|begin_of_text|>",
        image_placeholder=LLAVA_IMAGE_PLACEHOLDER,
    ),
    # Idefics3 / SmolVLM: "User:" + the image first + the question, "<end_of_utterance>" ending each turn, the
    # reply after "Assistant:" and a space (their chat templates' content-block form). SmolVLM's tokenizer
    # writes no BOS, its template "<|im_start|>"; Idefics3-8B's Llama-3 tokenizer adds <|begin_of_text|>.
    *(ChatTemplate(
        name=name,
        user="User:{content}<end_of_utterance>\n",
        assistant_header="Assistant:",
        reply_prefix=" ",
        end_of_turn="<end_of_utterance>",
        separator="\n",
        stop_words=("<end_of_utterance>",),
        bos=bos,
        image_placeholder=LLAVA_IMAGE_PLACEHOLDER,
    ) for name, bos in (("smolvlm", "<|im_start|>"), ("idefics3", "<|begin_of_text|>"))),
    # Stage-1 captions (LLaVA conv_llava_plain / preprocess_plain): the image(s), the caption, "\n".
    # The user's words are dropped; caption + "\n" is trained. No BOS: set bos="<s>" with replace() to
    # match LLaVA-1.5's stage 1, where the Llama tokenizer prepended it.
    ChatTemplate(
        name="plain",
        user="{content}",
        assistant_header="",
        end_of_turn="\n",
        stop_words=("\n",),
        user_text=False,
        image_placeholder=LLAVA_IMAGE_PLACEHOLDER,
        image_newline=False,
    ),
)}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get_template(name: str) -> ChatTemplate:
    """The registered template called ``name``.

    Raises:
        UnknownTemplateError: (a ``KeyError``) naming the available templates and the nearest match.

    Example:
        >>> get_template("internvl2_5").end_of_turn
        '<|im_end|>'
    """
    if name in TEMPLATES:
        return TEMPLATES[name]
    by_normal = {_normalise(n): n for n in TEMPLATES}
    nearest = by_normal.get(_normalise(str(name)))
    if nearest is None:
        close = difflib.get_close_matches(str(name), list(TEMPLATES), n=1, cutoff=0.4)
        nearest = close[0] if close else None
    hint = f"; did you mean {nearest!r}?" if nearest else "."
    raise UnknownTemplateError(
        f"unknown chat template {name!r}{hint} Available: {', '.join(sorted(TEMPLATES))}")
