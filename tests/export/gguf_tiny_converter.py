"""llama.cpp's convert_hf_to_gguf.py, run unchanged, for vlft's tiny tokenizers.

The converter names a BPE tokenizer's pre-tokenizer by a hash of its ids on a fixed text, from a table of
released models; a tokenizer trained here is in no table. vlft's tiny tokenizers are byte-level BPE with
GPT-2's split, which llama.cpp calls "gpt-2": that is the one answer given for a hash the table lacks.
Installed by the tests as DIR/convert_hf_to_gguf.py with REAL_LLAMA_CPP replaced by the real tree.
"""
import runpy
import sys
from pathlib import Path

REAL = Path("REAL_LLAMA_CPP")
sys.path[:0] = [str(REAL), str(REAL / "gguf-py")]

from conversion.base import TextModel  # noqa: E402

_table = TextModel.get_vocab_base_pre


def _tiny_aware(self, tokenizer):
    try:
        return _table(self, tokenizer)
    except NotImplementedError:
        return "gpt-2"


TextModel.get_vocab_base_pre = _tiny_aware
sys.argv[0] = str(REAL / "convert_hf_to_gguf.py")
runpy.run_path(str(REAL / "convert_hf_to_gguf.py"), run_name="__main__")
