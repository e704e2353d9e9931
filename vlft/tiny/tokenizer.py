"""Train a tiny tokenizer locally, with the special tokens of the VLM families: byte-level BPE (Qwen2, Llama-3
style), or a SentencePiece model (tokenizer.model, as InternLM2 ships one) for readers that need the .model."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from vlft.families import INTERNVL, family_named

# Specials shared by every tiny tokenizer so one vocabulary serves every chat template.
CHAT_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",          # chatml (Qwen, InternLM2)
    "<s>", "</s>", "<unk>",                                 # llama / vicuna
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # llama3
]

_CORPUS_WORDS = (
    "the a an is are what which dish food photo image picture shows this that answer question "
    "user assistant system USER ASSISTANT A chat between curious human and artificial intelligence "
    "gives helpful detailed polite answers to the human's questions you are red green blue yellow "
    "purple orange white black round square triangle star striped dotted plain dumplings noodles "
    "sushi pizza salad soup curry taco cake bread rice burger option options choose letter B C D "
    "describe briefly caption one word yes no left right top bottom number count"
).split()


def _corpus() -> list[str]:
    lines = []
    for i, word in enumerate(_CORPUS_WORDS):
        nxt = _CORPUS_WORDS[(i * 7 + 3) % len(_CORPUS_WORDS)]
        lines.append(f"{word} {nxt}. {word.capitalize()}: {nxt}?\n(A) {word} {i}\n")
    lines.append("0123456789 .,:;!?()[]{}<>-_/\\'\"\n\t")
    return lines * 4


def build_tiny_tokenizer(out_dir: str | Path, *, family: str = INTERNVL.name, chat_style: str = "chatml",
                         vocab_size: int = 512):
    """Write a tokenizer to ``out_dir`` and return it as a ``PreTrainedTokenizerFast``.

    family: a model family, whose named image tokens (InternVL: <img>, </img>, <IMG_CONTEXT>, <video>; LLaVA:
            <image>) become named extra special tokens; "text" adds none (a bare LLM's tokenizer).
    chat_style: "chatml" (eos <|im_end|>, pad <|endoftext|>) or "llama" (bos <s>, eos </s>, unk <unk>).
    """
    from transformers import PreTrainedTokenizerFast

    image_tokens = {} if family == "text" else family_named(family).named_tokens
    specials = CHAT_SPECIALS + list(image_tokens.values())
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)

    if chat_style == "chatml":
        roles = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None)
    elif chat_style == "llama":
        roles = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    else:
        raise ValueError(f"chat_style must be 'chatml' or 'llama', got {chat_style!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens=dict(image_tokens),
        model_max_length=4096,
        **{k: v for k, v in roles.items() if v is not None},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_sentencepiece_tokenizer(out_dir: str | Path, *, family: str = INTERNVL.name, vocab_size: int = 400):
    """Write an InternLM2-like tokenizer to ``out_dir``: a SentencePiece BPE ``tokenizer.model`` (byte fallback,
    no dummy prefix, the chatml specials as its own pieces, as InternLM2's has them) plus transformers' fast
    conversion of it, with the family's image tokens added after the SentencePiece vocabulary (where InternVL2
    adds them). Returns the ``PreTrainedTokenizerFast``; its ids equal SentencePiece's on any text.
    """
    import sentencepiece
    from transformers import LlamaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [line for chunk in _corpus() for line in chunk.split("\n") if line]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>", "<|endoftext|>"], unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    (out_dir / "tokenizer.vocab").unlink()
    image_tokens = family_named(family).named_tokens
    fast = LlamaTokenizer.from_pretrained(out_dir, add_bos_token=False, add_eos_token=False, legacy=False,
                                          add_prefix_space=False, model_max_length=4096, eos_token="<|im_end|>",
                                          pad_token="<|endoftext|>", extra_special_tokens=dict(image_tokens))
    fast.save_pretrained(out_dir)
    return fast
