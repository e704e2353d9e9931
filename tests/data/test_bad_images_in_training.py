"""An image that passes the header-only scan but fails to decode while training: skipped and counted, or an error."""
import logging

import pytest
import torch
from PIL import Image

from vlft.config import spec_from_dict
from vlft.data.collate import pack_collate, pad_collate
from vlft.data.dataset import SupervisedDataset, pipeline_from_spec
from vlft.data.encode import IGNORE_INDEX
from vlft.data.record import Sample, Turn
from vlft.errors import DataError
from vlft.model.load import build_vlm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    root = tmp_path_factory.mktemp("tiny_bad_images")
    path = make_tiny_internvl_hf(root / "base")
    spec = spec_from_dict({"model": {"family": "internvl", "path": str(path), "attn_implementation": "eager"},
                           "data": {"template": "internvl2_5", "max_length": 256, "tiling": {"max_tiles": 4}}})
    model, tokenizer = build_vlm(spec.model)
    model.eval()
    return spec, model, tokenizer, root


def _truncated_jpeg(path, size=(120, 60)):
    """A real JPEG cut in half: its header (and so its size) reads fine, its pixels do not."""
    noise = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8).numpy()
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as image:
        assert image.size == size  # the scan training does before it starts passes
    return str(path)


def _sample(sample_id, image, root):
    return Sample(id=sample_id, source=str(root / "train.json"), dataset="t", images=(image,),
                  turns=(Turn("user", "<image>\nWhat is it?"), Turn("assistant", "a plate of dumplings")))


@pytest.fixture
def data(tiny, tmp_path):
    spec, model, tokenizer, root = tiny
    good = tmp_path / "good.png"
    Image.new("RGB", (120, 60), (200, 60, 20)).save(good)
    samples = [_sample("good", str(good), tmp_path), _sample("cut", _truncated_jpeg(tmp_path / "cut.jpg"), tmp_path)]
    return pipeline_from_spec(spec, tokenizer, model.info), samples, tmp_path


@pytest.mark.battery("images", was="traceback")
def test_a_truncated_jpeg_is_skipped_mid_run_with_its_ids_kept_and_labels_ignored(data, caplog):
    pipeline, samples, root = data
    dataset = SupervisedDataset(samples, pipeline, on_bad_sample="skip")
    assert len(dataset) == 2  # the header-only scan cannot see it
    good, cut = dataset[0], dataset[1]
    with caplog.at_level(logging.WARNING, logger="vlft.data.dataset"):
        cut = dataset[1]
        again = dataset[1]  # a later epoch: not decoded, not warned again
    assert cut["input_ids"].tolist() == dataset.encoded[1].input_ids  # lengths unchanged: plans and resume hold
    assert (cut["labels"] == IGNORE_INDEX).all()
    assert cut["pixel_values"].shape == good["pixel_values"].shape == (dataset.tiles[1], 3, 56, 56)
    assert not cut["pixel_values"].any()
    assert torch.equal(again["labels"], cut["labels"])
    where = f"{root / 'train.json'}:cut"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {where}: cannot read image {root / 'cut.jpg'}")
    assert "data.on_bad_sample='skip'" in warnings[0] and "\n" not in warnings[0]
    assert list(dataset.stats.failed_in_training) == [1]
    assert dataset.stats.training_summary().startswith("1 sample(s) had an image that failed to decode")
    assert where in dataset.stats.training_summary()


@pytest.mark.battery("images", was="traceback")
def test_a_truncated_jpeg_in_a_batch_changes_nothing_for_the_other_samples(tiny, data):
    _, model, tokenizer, _ = tiny
    pipeline, samples, _ = data
    dataset = SupervisedDataset(samples, pipeline)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone = pad_collate([dataset[0]], pad)
        both = pad_collate([dataset[0], dataset[1]], pad)
        packed = pack_collate([[dataset[0], dataset[1]]], pad)
        loss = {name: model(**{k: v for k, v in batch.items() if k != "num_tokens"}, use_cache=False).loss.item()
                for name, batch in (("alone", alone), ("padded", both), ("packed", packed))}
    assert both["input_ids"].shape[1] == max(len(e.input_ids) for e in dataset.encoded)  # the plan's shapes
    assert both["pixel_values"].shape[0] == sum(dataset.tiles)
    assert loss["padded"] == pytest.approx(loss["alone"], abs=1e-5)
    assert loss["packed"] == pytest.approx(loss["alone"], abs=1e-5)


@pytest.mark.battery("images", was="traceback")
def test_a_truncated_jpeg_mid_run_is_one_error_naming_sample_and_image_when_on_bad_sample_is_error(data):
    pipeline, samples, root = data
    dataset = SupervisedDataset(samples, pipeline, on_bad_sample="error")
    dataset[0]
    with pytest.raises(DataError) as error:
        dataset[1]
    message = str(error.value)
    assert message.startswith(f"{root / 'train.json'}:cut: cannot read image {root / 'cut.jpg'}")
    assert "data.on_bad_sample='error'" in message and "\n" not in message


def test_truncated_images_are_never_loaded_as_half_images():
    from PIL import ImageFile

    import vlft.data.tiling  # noqa: F401  (importing vlft's image code must not flip the switch)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
