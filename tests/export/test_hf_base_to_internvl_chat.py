"""`--to internvl-chat` from a transformers-native base: every LLM of the InternVL-chat registry, a one-line
refusal for the others, and a folder that says it still lacks InternVL's remote code."""
from __future__ import annotations

import json

import pytest

from tests.export.conftest import build_train_checkpoint
from vlft.errors import CheckpointError
from vlft.export import convert_checkpoint
from vlft.tiny.checkpoints import make_tiny_internvl_hf


class _Log(list):
    def __call__(self, line):
        self.append(line)


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("llm, architecture", [("qwen3", "Qwen3ForCausalLM"), ("phi3", "Phi3ForCausalLM")])
def test_an_hf_base_with_a_qwen3_or_phi3_llm_converts_verified_and_says_the_folder_lacks_remote_code(
        tmp_path, llm, architecture):
    base = make_tiny_internvl_hf(tmp_path / "InternVL3_5-1B-hf", llm=llm)
    ckpt = build_train_checkpoint(base, tmp_path / "ckpt", family="internvl", template="internvl2_5")
    log = _Log()
    out = convert_checkpoint(ckpt, tmp_path / "chat", target="internvl-chat", dtype="fp32", log=log)
    assert any(line.startswith("verify (internvl-chat):") for line in log), log
    config = json.loads((out / "config.json").read_text())
    assert config["llm_config"]["architectures"] == [architecture]
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    missing = [line for line in log if "the folder is not complete" in line]
    assert len(missing) == 1 and "OpenGVLab/InternVL3_5-1B" in missing[0] and "modeling_internvl_chat.py" in missing[0]
    assert log[-1] == f"wrote {out}, which is not complete: add the InternVL remote code named in the warning above"


@pytest.mark.battery("model-dirs", was="silent")
def test_an_hf_base_whose_llm_has_no_internvl_chat_entry_is_refused_naming_the_known_ones(tmp_path):
    base = make_tiny_internvl_hf(tmp_path / "base", llm="mistral")
    ckpt = build_train_checkpoint(base, tmp_path / "ckpt", family="internvl", template="internvl2_5")
    with pytest.raises(CheckpointError) as error:
        convert_checkpoint(ckpt, tmp_path / "chat", target="internvl-chat", verify=False, log=lambda _: None)
    message = str(error.value)
    assert message.startswith("--to internvl-chat: the LLM (mistral) has no InternVL-chat layout here")
    assert all(name in message for name in ("internlm2", "qwen2", "qwen3", "llama", "phi3")), message
    assert "use --to hf" in message and "\n" not in message
    assert not (tmp_path / "chat").exists()


def test_the_computation_field_check_skips_a_base_composed_from_parts(tmp_path):
    """A parts run records its base as {"vision": ..., "llm": ...}: nothing to compare, never a TypeError."""
    from vlft.export.verify import check_computation_fields

    assert check_computation_fields(tmp_path, {"vision": str(tmp_path), "llm": str(tmp_path)}, "internvl") == []
