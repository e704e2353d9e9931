"""Dataset encoding, padding and packing: packed loss equals the samples run one by one."""
import pytest
import torch
from PIL import Image

from vlft.config import spec_from_dict
from vlft.data.collate import pack_collate, pack_rows, pad_collate, token_efficiency
from vlft.data.dataset import SupervisedDataset, pipeline_from_spec
from vlft.data.record import Sample, Turn
from vlft.data.sampler import plan_batches
from vlft.errors import DataError
from vlft.model.load import build_vlm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    root = tmp_path_factory.mktemp("tiny")
    path = make_tiny_internvl_hf(root / "base")
    spec = spec_from_dict({"model": {"family": "internvl", "path": str(path), "attn_implementation": "eager"},
                           "data": {"template": "internvl2_5", "max_length": 256,
                                    "tiling": {"max_tiles": 4}}})
    model, tokenizer = build_vlm(spec.model)
    model.eval()
    images = []
    for k, size in enumerate([(56, 56), (120, 60), (40, 160)]):
        p = root / f"img{k}.png"
        Image.new("RGB", size, (40 * k, 100, 200 - 30 * k)).save(p)
        images.append(str(p))
    return spec, model, tokenizer, images, root


def _samples(images, root):
    def s(i, imgs, q, a):
        return Sample(id=str(i), source=str(root / "train.json"), dataset="t", images=tuple(imgs),
                      turns=(Turn("user", "<image>\n" * len(imgs) + q), Turn("assistant", a)))
    return [s(0, images[:1], "What dish is this?", "dumplings"),
            s(1, [], "Say something.", "red round plain cake"),
            s(2, images[1:3], "Compare.", "left is noodles, right is soup"),
            s(3, images[2:3], "Colour?", "blue")]


def test_packed_loss_equals_token_weighted_per_sample_losses(tiny):
    spec, model, tokenizer, images, root = tiny
    dataset = SupervisedDataset(_samples(images, root), pipeline_from_spec(spec, tokenizer, model.info))
    features = [dataset[i] for i in range(len(dataset))]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for f in features:
            batch = pad_collate([f], tokenizer.pad_token_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                         labels=batch["labels"], use_cache=False).loss
            total, tokens = total + loss.item() * n, tokens + n
        rows = [features[:2], features[2:]]
        packed = pack_collate(rows, tokenizer.pad_token_id)
        packed_loss = model(input_ids=packed["input_ids"], pixel_values=packed["pixel_values"],
                            position_ids=packed["position_ids"], labels=packed["labels"], use_cache=False).loss
    assert abs(packed_loss.item() - total / tokens) < 1e-5


def test_padded_batch_loss_matches_single(tiny):
    spec, model, tokenizer, images, root = tiny
    dataset = SupervisedDataset(_samples(images, root), pipeline_from_spec(spec, tokenizer, model.info))
    batch = pad_collate([dataset[0], dataset[1]], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "pixel_values", "attention_mask")}, use_cache=False).logits
        alone = pad_collate([dataset[1]], tokenizer.pad_token_id)
        one = model(input_ids=alone["input_ids"], pixel_values=alone["pixel_values"], use_cache=False).logits
    n = alone["input_ids"].shape[1]
    assert torch.allclose(logits[1, :n], one[0], atol=1e-5)


def test_too_long_and_bad_samples_are_counted_or_fatal(tiny):
    spec, model, tokenizer, images, root = tiny
    pipeline = pipeline_from_spec(spec, tokenizer, model.info)
    long = Sample(id="long", source="f.json", dataset="t", turns=(Turn("user", "word " * 600), Turn("assistant", "x")))
    missing = Sample(id="gone", source="f.json", dataset="t", images=(str(root / "nope.png"),),
                     turns=(Turn("user", "<image>\nhi"), Turn("assistant", "x")))
    dataset = SupervisedDataset(_samples(images, root) + [long, missing], pipeline)
    assert len(dataset) == 4, dataset.stats.problems
    assert dataset.stats.dropped == {"too long": 1, "missing image": 1}
    assert any(p.startswith("f.json:long:") for p in dataset.stats.problems)
    assert any("f.json:gone" in p and "nope.png" in p for p in dataset.stats.problems)
    with pytest.raises(DataError, match="f.json:long"):
        SupervisedDataset([long], pipeline, on_bad_sample="error")


def test_image_tokens_match_tiles(tiny):
    spec, model, tokenizer, images, root = tiny
    dataset = SupervisedDataset(_samples(images, root), pipeline_from_spec(spec, tokenizer, model.info))
    for i in range(len(dataset)):
        item = dataset[i]
        n_ctx = int((item["input_ids"] == model.info.image_token_id).sum())
        assert n_ctx == item["pixel_values"].shape[0] * model.info.tokens_per_tile


def test_pack_rows_and_plans():
    lengths = [5, 3, 4, 2, 8, 1]
    rows = pack_rows(lengths, list(range(6)), 8)
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert sorted(i for row in rows for i in row) == list(range(6))
    plan = plan_batches(lengths, [True] * 6, batch_size=2, seed=1, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(6))
    assert plan == plan_batches(lengths, [True] * 6, batch_size=2, seed=1, epoch=0)
    packed = plan_batches(lengths, [True] * 6, batch_size=1, seed=1, epoch=0, packing=True, max_length=8)
    assert token_efficiency(lengths, packed, packed=True) > token_efficiency(lengths, plan, packed=False)
