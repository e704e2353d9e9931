"""The encoded-rows cache: the same dataset as encoding in-process, built once, keyed, never read half-written."""
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from vlft.config import spec_from_dict
from vlft.data import cache as disk
from vlft.data import rows as rows_module
from vlft.data.dataset import CachedDataset, SupervisedDataset, build_dataset
from vlft.data.sampler import plan_batches
from vlft.errors import DataError
from vlft.model.facts import model_facts

SIZES = [(56, 56), (120, 60), (40, 160), (100, 100)]


def conv(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_images")
    for k, size in enumerate(SIZES):
        Image.new("RGB", size, (40 * k, 100, 200 - 30 * k)).save(root / f"img{k}.png")
    return root


def _llava_rows(n, prefix="s"):
    rows = []
    for i in range(n):
        if i % 5 == 4:  # text-only
            rows.append({"id": f"{prefix}{i}", "conversations": conv(("human", "Say hi."), ("gpt", "hi " * (i + 1)))})
        elif i % 5 == 3:  # two images
            rows.append({"id": f"{prefix}{i}", "image": [f"img{i % 4}.png", "img3.png"],
                         "conversations": conv(("human", "<image>\n<image>\nSame?"), ("gpt", "no " * i))})
        else:
            rows.append({"id": f"{prefix}{i}", "image": f"img{i % 4}.png",
                         "conversations": conv(("human", "<image>\nWhat dish?"), ("gpt", "dumplings " * (1 + i)))})
    return rows


def _write_formats(root: Path, kind: str) -> list[dict]:
    """data.datasets entries for one of the formats the readers know."""
    rows = _llava_rows(12)
    if kind == "llava":
        path = root / "train.json"
        path.write_text(json.dumps(rows + [{"id": "bad", "conversations": []},
                                           {"id": "gone", "image": "nope.png",
                                            "conversations": conv(("human", "<image>\nq"), ("gpt", "a"))},
                                           {"id": "long", "conversations": conv(("human", "word " * 400), ("gpt", "x"))}]))
        return [{"path": str(path), "repeat": 1.5}]
    if kind == "internvl_meta":
        (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _llava_rows(6, "b")))
        meta = {"food": {"root": "", "annotation": "a.jsonl", "repeat_time": 0.5, "max_dynamic_patch": 2},
                "ocr": {"root": "", "annotation": "b.jsonl", "repeat_time": 2.5}}
        (root / "meta.json").write_text(json.dumps(meta))
        return [{"path": str(root / "meta.json")}]
    if kind == "sharegpt":
        share = [{"messages": [{"role": "user", "content": "<image><image>Compare."},
                               {"role": "assistant", "content": "left " * (i + 1)}],
                  "images": [f"img{i % 4}.png", "img1.png"]} for i in range(5)]
        share.append({"messages": [{"role": "user", "content": "Just text"}, {"role": "assistant", "content": "OK"}]})
        (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in share))
        return [{"path": str(root / "chat.jsonl"), "repeat": 0.5}, {"path": str(root / "chat.jsonl"), "name": "again"}]
    table = datasets.Dataset.from_list([{"id": r["id"], "image": r.get("image") if isinstance(r.get("image"), list)
                                         else ([r["image"]] if "image" in r else []),
                                         "conversations": r["conversations"]} for r in rows])
    if kind == "parquet":
        table.to_parquet(str(root / "t.parquet"))
        return [{"path": str(root / "t.parquet")}]
    table.save_to_disk(str(root / "saved"))
    return [{"path": str(root / "saved")}]


def _spec(model, entries, **data):
    return spec_from_dict({"model": {"family": "internvl", "path": str(model)},
                           "data": {"datasets": entries, "template": "internvl2_5", "max_length": 256,
                                    "tiling": {"max_tiles": 4}, **data},
                           "schedule": {"seed": 3, "micro_batch_size": 2}})


@pytest.fixture(scope="module")
def facts(tiny_dir):
    info, tokenizer = model_facts(_spec(tiny_dir["internvl_hf"], [{"path": "x.json"}]).model)
    return Path(tiny_dir["internvl_hf"]), info, tokenizer


def _copy_images(images: Path, root: Path) -> None:
    for p in images.iterdir():
        shutil.copy(p, root / p.name)


def _same(cached: CachedDataset, plain: SupervisedDataset):
    assert isinstance(cached, CachedDataset) and type(plain) is SupervisedDataset
    assert len(cached) == len(plain)
    assert cached.lengths.tolist() == plain.lengths
    assert cached.has_image.tolist() == plain.has_image
    assert cached.tiles.tolist() == plain.tiles
    assert [s.where for s in cached.samples] == [s.where for s in plain.samples]
    assert [s.images for s in cached.samples] == [s.images for s in plain.samples]
    for i in range(len(plain)):
        a, b = cached[i], plain[i]
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (i, key)
    for packing in (False, True):
        kw = dict(batch_size=2, seed=3, epoch=1, packing=packing, max_length=300)
        assert plan_batches(cached.lengths, cached.has_image, **kw) == plan_batches(plain.lengths, plain.has_image,
                                                                                   **kw)
    assert cached.stats == plain.stats


@pytest.mark.parametrize("kind", ["llava", "internvl_meta", "sharegpt", "parquet", "save_to_disk"])
def test_the_cached_dataset_equals_the_in_process_one_on_every_format(tmp_path, facts, images, kind):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, kind))
    cached = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "cache")
    plain = build_dataset(spec, tokenizer, info, cache=False)
    _same(cached, plain)
    assert cached.rows.built_in is not None
    again = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "cache")
    assert again.rows.built_in is None and again.rows.path == cached.rows.path  # opened, nothing encoded
    _same(again, plain)
    if kind == "llava":
        assert cached.stats.dropped == {"malformed record": 1, "missing image": 2, "too long": 2}  # repeat 1.5


def test_a_second_run_encodes_nothing(tmp_path, facts, images, monkeypatch):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    first = build_dataset(spec, tokenizer, info)  # the session's VLFT_CACHE_DIR
    assert Path(os.environ[disk.CACHE_ENV]) in first.rows.path.parents

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(rows_module, "_encode_into", no_encoding)
    monkeypatch.setattr(rows_module, "read_distinct", no_encoding)
    second = build_dataset(spec, tokenizer, info)
    assert second.rows.path == first.rows.path and len(second) == len(first)
    assert "opened, nothing encoded" in second.cache_line


def test_two_workers_build_the_same_rows_as_one(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    one = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "one", num_proc=1)
    two = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "two", num_proc=2)
    assert len(list(two.rows.path.glob("rows*.arrow"))) == 2
    _same(two, build_dataset(spec, tokenizer, info, cache=False))
    assert one.lengths.tolist() == two.lengths.tolist()


def _key_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def test_a_changed_template_tokenizer_tiling_or_annotation_gives_a_new_cache(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    entries = _write_formats(tmp_path, "llava")
    root = tmp_path / "cache"
    build_dataset(_spec(model, entries), tokenizer, info, cache_dir=root)
    seen = _key_dirs(root)
    assert len(seen) == 1

    def new_key(spec, tok=tokenizer):
        build_dataset(spec, tok, info, cache_dir=root)
        found = _key_dirs(root)
        assert len(found) == len(seen) + 1, "no new cache"
        seen.update(found)

    new_key(_spec(model, entries, template="chatml"))
    new_key(_spec(model, entries, tiling={"max_tiles": 2}))
    new_key(_spec(model, entries, system_prompt="Be brief."))
    new_key(_spec(model, entries, max_length=200))

    copied = tmp_path / "model"
    shutil.copytree(model, copied)
    config = json.loads((copied / "tokenizer_config.json").read_text())
    (copied / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 12345}))
    from transformers import AutoTokenizer
    new_key(_spec(model, entries), AutoTokenizer.from_pretrained(copied))

    path = Path(entries[0]["path"])
    rows = json.loads(path.read_text())
    rows[0]["conversations"][1]["value"] = "a different answer"
    path.write_text(json.dumps(rows))
    new_key(_spec(model, entries))
    assert build_dataset(_spec(model, entries), tokenizer, info, cache_dir=root).rows.built_in is None


@pytest.mark.battery("disk-full", was="silent")
@pytest.mark.parametrize("damage", ["truncate_rows", "drop_meta", "truncate_order"])
def test_a_truncated_or_half_written_cache_is_detected_and_rebuilt(tmp_path, facts, images, damage):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    root = tmp_path / "cache"
    first = build_dataset(spec, tokenizer, info, cache_dir=root)
    path = first.rows.path
    expected = [first[i]["input_ids"].tolist() for i in range(len(first))]
    del first
    if damage == "drop_meta":  # as a copy that stopped before its last file
        (path / disk.META).unlink()
    else:
        target = next(path.glob("rows*.arrow")) if damage == "truncate_rows" else path / "order.npy"
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    # and an interrupted build of the same key lies beside it: never read
    (root / f".building-{path.name}-999-deadbeef").mkdir()
    (root / f".building-{path.name}-999-deadbeef" / "rows.arrow").write_bytes(b"half")
    rebuilt = build_dataset(spec, tokenizer, info, cache_dir=root)
    assert rebuilt.rows.built_in is not None and rebuilt.rows.path == path
    assert [rebuilt[i]["input_ids"].tolist() for i in range(len(rebuilt))] == expected
    assert not [p for p in root.iterdir() if p.name.startswith(".stale-")]


def test_a_damaged_cache_is_named_in_one_line_when_rebuilt(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    root = tmp_path / "cache"
    path = build_dataset(spec, tokenizer, info, cache_dir=root).rows.path
    target = next(path.glob("rows*.arrow"))
    target.write_bytes(target.read_bytes()[:100])
    opened = disk.open_cache(root, path.name, on_damaged=(said := []).append)
    assert opened is None and len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith(f"data cache {path} is damaged (") and "truncated" in said[0]


def test_an_image_that_appears_later_rebuilds_its_rows(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    root = tmp_path / "cache"
    before = build_dataset(spec, tokenizer, info, cache_dir=root)
    assert before.stats.dropped["missing image"] == 2
    Image.new("RGB", (56, 56)).save(tmp_path / "nope.png")  # the user adds the missing file
    after = build_dataset(spec, tokenizer, info, cache_dir=root)
    assert after.rows.built_in is not None and "missing image" not in after.stats.dropped
    assert len(after) == len(before) + 2


def test_an_image_replaced_between_runs_re_encodes_only_its_rows_and_trains_them(tmp_path, facts, images,
                                                                                   monkeypatch, caplog):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    root = tmp_path / "cache"
    before = build_dataset(spec, tokenizer, info, cache_dir=root)
    Image.new("RGB", (400, 100), (9, 9, 9)).save(tmp_path / "img1.png")  # same path, 4 tiles now, not 2
    real, encoded = rows_module.encode_row, []

    def counting(sample, pipeline):
        encoded.append(sample.where)
        return real(sample, pipeline)

    monkeypatch.setattr(rows_module, "encode_row", counting)
    monkeypatch.setattr(rows_module, "_encode_into", lambda *a, **k: pytest.fail("the whole cache was built again"))
    after = build_dataset(spec, tokenizer, info, cache_dir=root)
    assert sorted(encoded) == [f"{tmp_path / 'train.json'}:s1", f"{tmp_path / 'train.json'}:s5"]  # img1's rows
    assert after.rows.path == before.rows.path and "2 row(s) whose images changed" in after.cache_line
    _same(after, build_dataset(spec, tokenizer, info, cache=False))  # the oracle: encoded without a cache
    replaced = [i for i, s in enumerate(after.samples) if [Path(p).name for p in s.images] == ["img1.png"]]
    assert replaced and all(after.tiles[i] > before.tiles[i] for i in replaced)
    for i in replaced:  # trained: the pixels match the row, the replies keep their labels
        item = after[i]
        assert len(item["pixel_values"]) == after.tiles[i] and (item["labels"] != -100).any()
    assert "when the data was read" not in caplog.text and not after.stats.failed_in_training
    encoded.clear()
    assert build_dataset(spec, tokenizer, info, cache_dir=root).rows.built_in is None and not encoded


def test_an_image_replaced_while_training_is_still_caught_when_loaded(tmp_path, facts, images, caplog):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    dataset = build_dataset(spec, tokenizer, info, cache_dir=tmp_path / "cache")
    Image.new("RGB", (400, 100), (9, 9, 9)).save(tmp_path / "img1.png")  # after the cache was opened
    i = next(i for i, s in enumerate(dataset.samples) if [Path(p).name for p in s.images] == ["img1.png"])
    assert (dataset[i]["labels"] == -100).all()
    assert "when the data was read (was an image replaced during training?)" in caplog.text


def test_caches_can_be_listed_and_cleared(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    entries = _write_formats(tmp_path, "llava")
    root = tmp_path / "cache"
    build_dataset(_spec(model, entries), tokenizer, info, cache_dir=root)
    build_dataset(_spec(model, entries, max_length=200), tokenizer, info, cache_dir=root)
    (root / ".building-abc-1-ffffffff").mkdir()
    (root / "not-ours").mkdir()
    listed = disk.list_caches(root)
    assert sorted(e.complete for e in listed) == [False, True, True]
    complete = [e for e in listed if e.complete]
    assert {e.rows for e in complete} == {14}  # 15 rows, one malformed and all(entries[0]["path"] in e.description for e in complete)
    assert all(e.size_bytes > 0 for e in complete) and all(e.path.name in e.line() for e in listed)
    assert disk.clear_caches(root, older_than_days=1) == []
    removed = disk.clear_caches(root)
    assert len(removed) == 3 and [p.name for p in root.iterdir()] == ["not-ours"]


def test_only_the_builder_encodes_and_every_process_passes_the_barrier(tmp_path, facts, images):
    model, info, tokenizer = facts
    _copy_images(images, tmp_path)
    spec = _spec(model, _write_formats(tmp_path, "llava"))
    root = tmp_path / "cache"
    waited = []
    with pytest.raises(DataError, match="missing after the building process's turn") as error:
        build_dataset(spec, tokenizer, info, cache_dir=root, builder=False, wait=lambda: waited.append("other"))
    assert "\n" not in str(error.value) and waited == ["other"]
    built = build_dataset(spec, tokenizer, info, cache_dir=root, builder=True, wait=lambda: waited.append("rank0"))
    other = build_dataset(spec, tokenizer, info, cache_dir=root, builder=False, wait=lambda: waited.append("other"))
    assert other.rows.built_in is None and other.rows.path == built.rows.path and len(other) == len(built)
    assert waited == ["other", "rank0", "other"]

    broken = _spec(model, [{"path": str(tmp_path / "nope.json")}])
    (tmp_path / "nope.json").write_text("{not json")
    with pytest.raises(DataError):  # the builder fails, but only after its turn at the barrier
        build_dataset(broken, tokenizer, info, cache_dir=root, wait=lambda: waited.append("failed rank0"))
    assert waited[-1] == "failed rank0"


def test_cache_root_follows_vlft_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(disk.CACHE_ENV, str(tmp_path / "mine"))
    assert disk.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(disk.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert disk.cache_root() == tmp_path / "xdg" / "vlft" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert disk.cache_root() == Path.home() / ".cache" / "vlft" / "datasets"


def test_default_processes_are_the_cpus_capped_and_one_for_a_small_set():
    assert rows_module.default_procs(10) == 1
    assert 1 <= rows_module.default_procs(10_000_000) <= min(8, len(os.sched_getaffinity(0)))


def test_rows_store_long_runs_compactly_and_expand_exactly():
    values = [1, 2] + [7] * 300 + [3] + [-100] * 40 + [5] * 7
    compact = rows_module._compact(values)
    assert len(compact[0]) == 2 + 1 + 1 + 1 + 7
    assert rows_module._expand(*compact).tolist() == values
    empty = rows_module._compact([])
    assert rows_module._expand(*empty).tolist() == [] and np.asarray(empty[0]).dtype == np.int32
