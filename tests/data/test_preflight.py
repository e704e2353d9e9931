"""`vlft check-data`: every problem in one run, each naming file and sample; numbers match training; read-only."""
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.config import load_config
from vlft.data.dataset import build_dataset
from vlft.data.preflight import (IMAGE_COUNT, MALFORMED, MISSING_IMAGE, NO_ASSISTANT, TOO_LONG, UNREADABLE_IMAGE,
                                 Percentiles, format_report)
from vlft.data.tiling import TilingSpec, num_tiles
from vlft.engine.check_data import check_data_from_config, check_spec_data
from vlft.errors import DataError
from vlft.model.facts import model_facts

# Tiny models: 56 px tiles; InternVL 4 tokens per tile (dynamic tiling), LLaVA 16 (pad_square: one tile).
SIZES = [(56, 56), (120, 60), (40, 160), (100, 100)]


def _png(path: Path, size, color=(200, 60, 20)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def _row(sample_id, images, question, answer, *, role="human"):
    human = "<image>\n" * len(images) + question
    row = {"id": sample_id, "conversations": [{"from": role, "value": human}, {"from": "gpt", "value": answer}]}
    if images:
        row["image"] = images[0] if len(images) == 1 else images
    return row


def _config(root: Path, model: Path, datasets: list[Path], *, family="internvl", max_length=256, extra="") -> str:
    if family == "internvl":
        model_part = f"model = dict(family='internvl', path={str(model)!r})"
        data = "template='internvl2_5', tiling=dict(mode='dynamic', max_tiles=4)"
    else:
        model_part = f"model = dict(family='llava', path={str(model)!r}, connector=dict(downsample_ratio=1.0))"
        data = "template='vicuna_v1', tiling=dict(mode='pad_square')"
    cfg = root / f"check_{family}.py"
    cfg.write_text(f"{model_part}\n"
                   f"data = dict(datasets=[{', '.join(f'dict(path={str(d)!r})' for d in datasets)}], {data}, "
                   f"max_length={max_length}{extra})\n"
                   "schedule = dict(micro_batch_size=4, seed=0)\n")
    return str(cfg)


def _clean_data(root: Path) -> tuple[Path, Path]:
    """Two datasets: a LLaVA .json (8 image samples + 1 text-only) and a ShareGPT .jsonl (3 two-image samples)."""
    names = [_png(root / "img" / f"{k}.png", size, (30 * k, 90, 200)) for k, size in enumerate(SIZES)]
    rows = [_row(f"a{i}", [f"img/{names[i % 4]}"], "What dish is this?" + " please" * i, "dumplings " * (1 + 25 * i))
            for i in range(8)]
    rows.append(_row("text-only", [], "Say something.", "red round plain cake"))
    llava = root / "food.json"
    llava.write_text(json.dumps(rows))
    share = root / "chat.jsonl"
    share.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "<image><image>Compare."},
                                                        {"role": "assistant", "content": "left noodles"}],
                                           "images": [f"img/{names[i]}", f"img/{names[3]}"]})
                               for i in range(3)) + "\n")
    return llava, share


@pytest.fixture
def internvl_model(tiny_dir):
    return Path(tiny_dir["internvl_hf"])


@pytest.fixture
def llava_model(tiny_dir):
    return Path(tiny_dir["llava_hf"])


@pytest.fixture
def dirty(tmp_path, internvl_model):
    """One dataset with one sample per problem kind, plus a good one and a truncated PNG."""
    root = tmp_path / "dirty"
    good = _png(root / "good.png", (56, 56))
    (root / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    Image.new("RGB", (300, 300), (1, 2, 3)).save(root / "whole.png")
    data = (root / "whole.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])  # a valid header, pixels cut off
    rows = [
        _row("ok", [good], "What is it?", "soup"),
        _row("bad-img", ["corrupt.png"], "What is it?", "soup"),
        _row("trunc", ["truncated.png"], "What is it?", "soup"),
        _row("gone", ["nowhere.png"], "What is it?", "soup"),
        {"id": "mismatch", "image": good, "conversations": [{"from": "human", "value": "<image><image> two?"},
                                                            {"from": "gpt", "value": "one"}]},
        {"id": "empty", "conversations": []},
        _row("robot", [], "hello", "hi", role="robot"),
        _row("long", [], "word " * 400, "ok"),
        {"id": "no-answer", "conversations": [{"from": "human", "value": "anyone?"}]},
    ]
    path = root / "train.json"
    path.write_text(json.dumps(rows))
    return _config(root, internvl_model, [path], extra=", on_bad_sample='error'"), path


@pytest.mark.parametrize("family", ["internvl", "llava"])
def test_clean_dataset_numbers(tmp_path, family, request):
    model = request.getfixturevalue(f"{family}_model")
    llava, share = _clean_data(tmp_path)
    cfg = _config(tmp_path, model, [llava, share], family=family, max_length=1024)  # room to pack several
    spec = load_config(cfg)
    spec.data.datasets[0].repeat, spec.data.datasets[1].repeat = 1.5, 3.0
    report = check_spec_data(spec, config=cfg)

    assert report.exit_code == 0 and report.problems == {}
    assert report.samples_per_dataset == {"food": 9, "chat": 3}
    assert report.samples_per_epoch == {"food": 13, "chat": 9}
    assert report.images_checked == 4 and report.usable == 12
    # the histogram counts each image of each sample, with the tile budget shared within a sample
    if family == "internvl":
        single = [num_tiles(*SIZES[i % 4], TilingSpec(tile_size=56, max_tiles=4)) for i in range(8)]
        pairs = [num_tiles(*SIZES[k], TilingSpec(tile_size=56, max_tiles=2)) for i in range(3) for k in (i, 3)]
        assert report.tile_histogram == dict(sorted(Counter(single + pairs).items()))
        assert len(report.tile_histogram) > 1
        per_tile = 4
    else:
        assert report.tile_histogram == {1: 8 + 6}
        per_tile = 16
    assert report.image_tokens.max == max(report.tile_histogram) * per_tile * (1 if family == "internvl" else 2)
    for p in (report.image_tokens, report.text_tokens, report.total_tokens):
        assert 0 <= p.p50 <= p.p90 <= p.p99 <= p.max
    assert 0 < report.text_tokens.p50 and report.total_tokens.max <= report.max_length
    assert report.packing_efficiency >= report.padding_efficiency > 0
    assert report.packing_batches <= report.padding_batches == 6  # 22 samples per epoch / micro batch 4

    # the same numbers training computes (build_dataset on the same tokenizer and facts)
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info)
    assert report.total_tokens.max == max(dataset.lengths)
    assert sorted(dataset.tiles) == sorted(sum(dataset.pipeline.tile_counts(s)) for s in dataset.samples)
    assert len(dataset) == 22

    text = format_report(report)
    assert "problems: none" in text and text.rstrip().endswith("OK")


def test_dirty_dataset_reports_everything_in_one_run(dirty):
    cfg, path = dirty
    spec = load_config(cfg)
    report = check_spec_data(spec, config=cfg)
    p = report.problems

    def ids(kind):
        return sorted(line.split(": ")[0] for line in p.get(kind, []))

    where = str(path)
    assert ids(UNREADABLE_IMAGE) == [f"{where}:bad-img", f"{where}:trunc"]
    assert ids(MISSING_IMAGE) == [f"{where}:gone"]
    assert ids(IMAGE_COUNT) == [f"{where}:mismatch"]
    assert ids(MALFORMED) == [f"{where}:empty", f"{where}:robot"]
    assert ids(NO_ASSISTANT) == [f"{where}:no-answer"]
    assert ids(TOO_LONG) == [f"{where}:long"]
    assert "nowhere.png" in p[MISSING_IMAGE][0] and "corrupt.png" in " ".join(p[UNREADABLE_IMAGE])
    assert report.usable == 1 and report.exit_code == 1
    assert set(report.error_kinds) == {UNREADABLE_IMAGE, MISSING_IMAGE, IMAGE_COUNT, MALFORMED, NO_ASSISTANT, TOO_LONG}


def test_cli_clean_and_dirty(tmp_path, internvl_model, dirty):
    runner = CliRunner()
    llava, share = _clean_data(tmp_path / "clean")
    clean = runner.invoke(main, ["check-data", _config(tmp_path / "clean", internvl_model, [llava, share])])
    assert clean.exit_code == 0, clean.output
    assert "food" in clean.output and "tiles per image" in clean.output and "OK" in clean.output

    cfg, path = dirty
    result = runner.invoke(main, ["check-data", cfg])
    assert result.exit_code == 1, result.output
    for sample_id in ("bad-img", "trunc", "gone", "mismatch", "empty", "robot", "long", "no-answer"):
        lines = [line for line in result.output.splitlines() if f"{path}:{sample_id}:" in line]
        assert len(lines) == 1, (sample_id, result.output)
    assert f"{path}:ok:" not in result.output
    assert "FAILED" in result.output


def test_too_long_is_a_warning_when_skipping(tmp_path, internvl_model):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_row("short", [], "hi", "ok"), _row("long", [], "word " * 400, "ok")]))
    cfg = _config(tmp_path, internvl_model, [path])
    runner = CliRunner()
    skip = runner.invoke(main, ["check-data", cfg])
    assert skip.exit_code == 0, skip.output
    assert f"{path}:long: " in skip.output and "warning" in skip.output
    error = runner.invoke(main, ["check-data", cfg, "--cfg-options", "data.on_bad_sample=error"])
    assert error.exit_code == 1, error.output


def test_missing_dataset_file_is_one_line(tmp_path, internvl_model):
    cfg = _config(tmp_path, internvl_model, [tmp_path / "nope.json"])
    result = CliRunner().invoke(main, ["check-data", cfg])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'nope.json'}: dataset file not found (data.datasets[].path)"]


def test_printout_is_capped_but_the_result_is_complete(tmp_path, internvl_model):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_row(f"s{i}", [f"missing{i}.png"], "q", "a") for i in range(60)]
                               + [_row("fine", [], "q", "a")]))
    spec = load_config(_config(tmp_path, internvl_model, [path]))
    spec.data.datasets[0].repeat = 0.1  # rows an epoch leaves out are checked too
    report = check_spec_data(spec)
    assert len(report.problems[MISSING_IMAGE]) == 60
    text = format_report(report)
    assert sum(f"{path}:s" in line for line in text.splitlines()) == 50
    assert "... and 10 more" in text


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_writes_nothing(tmp_path, internvl_model, dirty):
    cfg, _ = dirty
    llava, share = _clean_data(tmp_path / "clean")
    clean = _config(tmp_path / "clean", internvl_model, [llava, share])
    before, model_before = _tree(tmp_path), _tree(Path(internvl_model))
    for config in (clean, cfg):
        CliRunner().invoke(main, ["check-data", config])
    assert _tree(tmp_path) == before
    assert _tree(Path(internvl_model)) == model_before


def test_loads_no_model_weights(tmp_path, internvl_model, monkeypatch):
    import safetensors.torch
    import transformers

    import vlft.model.load

    def forbidden(*args, **kwargs):
        raise AssertionError("check-data must not load model weights")

    monkeypatch.setattr(vlft.model.load, "build_vlm", forbidden)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    llava, share = _clean_data(tmp_path)
    assert check_data_from_config(_config(tmp_path, internvl_model, [llava, share])) == 0


@pytest.mark.parametrize("name", ["internvl_hf", "llava_hf", "internvl_chat_internlm2", "internvl_chat_qwen2",
                                  "internvl_parts", "llava_parts"])
def test_model_facts_match_the_loaded_model(tiny_dir, name):
    from vlft.model.load import build_vlm
    from vlft.specs import ConnectorSpec, LLMSpec, ModelSpec, VisionSpec

    family = "llava" if name.startswith("llava") else "internvl"
    connector = ConnectorSpec(downsample_ratio=1.0 if family == "llava" else 0.5)
    if name.endswith("_parts"):
        spec = ModelSpec(family=family, vision=VisionSpec(path=str(tiny_dir[f"{family}_vision"])),
                         llm=LLMSpec(path=str(tiny_dir[f"{family}_llm"])), connector=connector)
    else:
        spec = ModelSpec(family=family, path=str(tiny_dir[name]), connector=connector)
    info, tokenizer = model_facts(spec)
    model, loaded_tokenizer = build_vlm(spec)
    assert info == model.info
    assert tokenizer.get_vocab() == loaded_tokenizer.get_vocab()


def test_percentiles_nearest_rank():
    assert Percentiles.of([]) == Percentiles()
    assert Percentiles.of([7]) == Percentiles(7, 7, 7, 7)
    assert Percentiles.of(list(range(1, 101))) == Percentiles(50, 90, 99, 100)


# ------------------------------------------------------------------------------------ reliability battery

@pytest.mark.battery("images", was="silent")
def test_failed_images_are_counted_as_failed_not_decoded(tmp_path, internvl_model):
    good = _png(tmp_path / "good.png", (56, 56))
    (tmp_path / "corrupt.png").write_bytes(b"not an image" * 20)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_row("ok", [good], "q", "a"), _row("bad", ["corrupt.png"], "q", "a"),
                                _row("gone", ["missing.png"], "q", "a")]))
    report = check_spec_data(load_config(_config(tmp_path, internvl_model, [path])))
    assert (report.images_checked, report.images_decoded, report.images_missing, report.images_unreadable) == (3, 1, 1, 1)
    assert "3 image files: 1 decoded, 2 failed (1 missing, 1 unreadable)" in format_report(report)


def test_missing_images_are_capped_per_kind_even_when_one_sample_has_many(tmp_path, internvl_model):
    path = tmp_path / "d.json"
    rows = [_row(f"many{i}", [f"gone{i}_{k}.png" for k in range(3)], "q", "a") for i in range(30)]
    path.write_text(json.dumps(rows + [_row("fine", [], "q", "a")]))
    report = check_spec_data(load_config(_config(tmp_path, internvl_model, [path])))
    assert len(report.problems[MISSING_IMAGE]) == 90
    text = format_report(report)
    assert sum("image not found" in line for line in text.splitlines()) == 50
    assert "    ... and 40 more" in text


@pytest.mark.battery("images", was="silent")
def test_a_symlink_loop_is_called_a_symlink_loop_not_missing(tmp_path, internvl_model):
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "deleted.png")
    path = tmp_path / "d.json"
    path.write_text(json.dumps([_row("loop", ["loop.png"], "q", "a"), _row("dangling", ["dangling.png"], "q", "a"),
                                _row("fine", [], "q", "a")]))
    report = check_spec_data(load_config(_config(tmp_path, internvl_model, [path])))
    assert report.problems[UNREADABLE_IMAGE] == [f"{path}:loop: cannot read image {loop}: symlink loop "
                                                 "(a symlink that leads back to itself)"]
    assert report.problems[MISSING_IMAGE] == [f"{path}:dangling: image not found: {tmp_path / 'dangling.png'} is a "
                                              f"symlink to {tmp_path / 'deleted.png'}, which does not exist"]


@pytest.mark.battery("annotations", was="traceback")
def test_a_latin1_annotation_file_is_one_error_line_in_check_data_and_train(tmp_path, internvl_model):
    path = tmp_path / "d.jsonl"
    path.write_bytes((json.dumps(_row("x", [], "caf\u00e9?", "oui"), ensure_ascii=False) + "\n").encode("latin-1"))
    cfg = _config(tmp_path, internvl_model, [path])
    result = CliRunner().invoke(main, ["check-data", cfg])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not UTF-8 text: byte 0xe9 at offset ")
    assert "save it as UTF-8" in lines[0]

    spec = load_config(cfg)  # what `vlft train` reads (the lead's train test covers the CLI)
    info, tokenizer = model_facts(spec.model)
    with pytest.raises(DataError, match=f"^{path}: not UTF-8 text"):
        build_dataset(spec, tokenizer, info)


def _odd_rows():
    def turns(*pairs):
        return [{"from": role, "value": text} for role, text in pairs]
    return [
        {"id": "ok", "conversations": turns(("human", "q"), ("gpt", "a"))},
        {"id": "greeter", "conversations": turns(("gpt", "Hello!"), ("human", "q"), ("gpt", "a"))},
        {"id": "twice", "conversations": turns(("human", "look"), ("human", "q"), ("gpt", "a"))},
        {"id": "empty", "conversations": turns(("human", "q"), ("gpt", "  "))},
        {"id": "escape", "image": "../up.png", "conversations": turns(("human", "q"), ("gpt", "a"))},
    ]


@pytest.mark.battery("annotations", was="silent")
def test_odd_conversations_are_listed_by_check_data_with_file_and_id(tmp_path, internvl_model):
    from vlft.data.preflight import EMPTY_ANSWER, IMAGE_OUTSIDE_ROOT, LEADING_ASSISTANT, USER_TURNS_MERGED

    _png(tmp_path / "up.png", (56, 56))
    path = tmp_path / "data" / "d.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_odd_rows()))
    report = check_spec_data(load_config(_config(tmp_path, internvl_model, [path])))
    assert {kind: [line.split(": ")[0] for line in lines] for kind, lines in report.problems.items()} == {
        EMPTY_ANSWER: [f"{path}:empty"], LEADING_ASSISTANT: [f"{path}:greeter"],
        USER_TURNS_MERGED: [f"{path}:twice"], IMAGE_OUTSIDE_ROOT: [f"{path}:escape"]}
    assert report.error_kinds == [EMPTY_ANSWER]  # dropped by training
    assert report.warning_kinds == [LEADING_ASSISTANT, USER_TURNS_MERGED, IMAGE_OUTSIDE_ROOT]  # kept
    assert report.usable == 4
    text = format_report(report)
    assert "  empty answer (1, error):" in text and "  user turns merged (1, warning):" in text
    assert text.rstrip().endswith("FAILED: 1 error (1 empty answer), 3 warnings")


@pytest.mark.battery("annotations", was="silent")
def test_train_says_how_many_samples_it_dropped_and_why_and_what_to_run(tmp_path, internvl_model):
    _png(tmp_path / "up.png", (56, 56))
    path = tmp_path / "data" / "d.json"
    path.parent.mkdir()
    rows = _odd_rows() + [_row("long", [], "word " * 400, "ok"), _row("gone", ["data/nope.png"], "q", "a"),
                          {"id": "broken", "conversations": []}]
    path.write_text(json.dumps(rows))
    spec = load_config(_config(tmp_path, internvl_model, [path]))
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info)
    assert [s.id for s in dataset.samples] == ["ok", "greeter", "twice", "escape"]
    assert dataset.stats.summary("my.py") == (
        "4 samples kept; 4 DROPPED (1 malformed record, 1 empty answer, 1 too long, 1 missing image): "
        "run `vlft check-data my.py` to list them; data.on_bad_sample='error' stops instead; "
        "3 kept with a warning (1 leading assistant turn dropped, 1 user turns merged, 1 image outside image_root)")

    spec.data.on_bad_sample = "error"
    with pytest.raises(DataError, match=rf"^{path}:broken: empty 'conversations' .*data.on_bad_sample='error'"):
        build_dataset(spec, tokenizer, info)
