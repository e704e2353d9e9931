"""An error raised inside the model (image tokens that do not match the images, an id past the vocabulary) is
a VlftError with one line, so train, chat and eval print `error: ...` and exit 2 instead of a traceback."""
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.config import spec_from_dict
from vlft.errors import VlftError
from vlft.model.load import build_vlm
from vlft.model.vlm import ModelInputError, VisionLanguageModel


@pytest.fixture(scope="module")
def model(tiny_dir):
    spec = spec_from_dict({"model": {"family": "internvl", "path": str(tiny_dir["internvl_hf"]),
                                     "attn_implementation": "eager"}})
    return build_vlm(spec.model)[0].eval()


@pytest.mark.battery("chat-eval", was="traceback")
def test_image_tokens_that_do_not_match_the_tiles_are_one_line(model):
    ids = torch.tensor([[3, *[model.info.image_token_id] * (model.info.tokens_per_tile + 1), 5]])
    with pytest.raises(ModelInputError) as caught:
        model(input_ids=ids, pixel_values=torch.zeros(1, 3, model.info.tile_size, model.info.tile_size))
    assert isinstance(caught.value, VlftError) and "\n" not in str(caught.value)
    assert "image tokens in the text (5) differ" in str(caught.value)


@pytest.mark.battery("chat-eval", was="traceback")
def test_an_id_past_the_vocabulary_is_one_line_in_forward_and_generate(model):
    vocab = model.language_model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[3, vocab + 5]])
    with pytest.raises(ModelInputError, match="the model cannot compute on this input \\(IndexError"):
        model(input_ids=ids)
    with pytest.raises(ModelInputError, match="IndexError"):
        model.generate(ids, max_new_tokens=1)


@pytest.mark.battery("chat-eval", was="traceback")
def test_vlft_chat_prints_a_model_error_as_one_line_and_exits_2(tiny_dir, tmp_path, monkeypatch):
    image = tmp_path / "red.png"
    Image.new("RGB", (56, 56), (200, 30, 30)).save(image)
    real = VisionLanguageModel.encode_images
    monkeypatch.setattr(VisionLanguageModel, "encode_images", lambda self, pixels: real(self, pixels)[:, 1:])
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_hf"]), "--image", str(image),
                                       "--prompt", "What colour?", "--max-new-tokens", "2"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "image features" in lines[0] and "Traceback" not in result.output
