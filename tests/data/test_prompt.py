"""One stop rule: training-time samples, `vlft chat` / `vlft eval` and the exported generation_config.json
stop on the same token ids, for every template."""
import json
from types import SimpleNamespace

import pytest
import torch

from vlft.data.dataset import DataPipeline
from vlft.data.prompt import stop_kwargs, stop_strings, stop_token_ids
from vlft.data.templates import TEMPLATES, get_template
from vlft.engine.samples import generate_samples
from vlft.export.hf_files import write_generation_config
from vlft.families import LLAVA
from vlft.infer._generate import GenerationSettings, generate_kwargs
from vlft.tiny.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt_tok")
    return {"chatml": build_tiny_tokenizer(root / "chatml", family="internvl", chat_style="chatml"),
            "llama": build_tiny_tokenizer(root / "llama", family="llava", chat_style="llama")}


class _RecordingModel:
    """Stands in for the VLM in training-time samples: records what they pass to generate."""

    training = False

    def __init__(self, eos: int):
        self.eos, self.seen = eos, {}

    def eval(self):
        pass

    def train(self, mode):
        pass

    def generate(self, ids, **kwargs):
        self.seen.update(kwargs)
        return torch.tensor([[self.eos]])


@pytest.mark.battery("chat-eval", was="silent")
@pytest.mark.parametrize("style", ["chatml", "llama"])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_samples_chat_and_the_exported_generation_config_stop_on_the_same_ids(tokenizers, tmp_path, name, style):
    tokenizer, template = tokenizers[style], get_template(name)
    rule = stop_token_ids(tokenizer, template)
    assert rule and tokenizer.eos_token_id in rule
    pipeline = DataPipeline(tokenizer=tokenizer, template=template, image_tokens=LLAVA.image_tokens,
                            tokens_per_tile=1, system_prompt=None, tiling=None, max_length=1 << 20)

    chat = generate_kwargs(pipeline, GenerationSettings())["eos_token_id"]
    write_generation_config(tmp_path, tokenizer, template)
    exported = json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"]
    exported = [exported] if isinstance(exported, int) else exported

    model = _RecordingModel(tokenizer.eos_token_id)
    spec = SimpleNamespace(engine=SimpleNamespace(sample_prompts=[SimpleNamespace(prompt="What colour?", image=None)],
                                                  sample_max_new_tokens=4))
    generate_samples(model, pipeline, spec, "cpu")
    assert rule == chat == exported == model.seen["eos_token_id"]


def test_a_stop_word_of_several_tokens_is_a_stop_string(tokenizers):
    from dataclasses import replace

    template = replace(get_template("chatml"), stop_words=("<|im_end|>", "END OF REPLY"))
    tokenizer = tokenizers["chatml"]
    assert stop_strings(tokenizer, template) == ["END OF REPLY"]
    kwargs = stop_kwargs(tokenizer, template)
    assert kwargs["stop_strings"] == ["END OF REPLY"] and kwargs["tokenizer"] is tokenizer
    assert kwargs["eos_token_id"] == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
