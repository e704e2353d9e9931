"""vlft.data.formats: every dataset format into the exact Samples, repeats, and bad rows reported by file and id."""

import json
import os

import pytest

from vlft.data.formats import (
    DatasetSource,
    DataFormatError,
    ReadReport,
    detect_format,
    read_all,
    read_samples,
)
from vlft.data.record import Sample, Turn
from vlft.errors import DataError

datasets = pytest.importorskip("datasets")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def conv(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def qa(n, prefix="q"):
    """n simple LLaVA rows with ids prefix0..prefix{n-1}."""
    return [{"id": f"{prefix}{i}", "image": f"{prefix}{i}.jpg",
             "conversations": conv(("human", "<image>\nwhat?"), ("gpt", str(i)))} for i in range(n)]


# ------------------------------------------------------------------------------------------------- LLaVA

LLAVA_ROWS = [
    {"id": "one", "image": "imgs/a.jpg", "conversations": conv(("human", "<image>\nWhat is it?"), ("gpt", "A cat."))},
    {"id": 7, "conversations": conv(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello"))},  # text-only, int id
    {"id": "multi", "image": ["a.jpg", "/abs/b.png"],
     "conversations": conv(("human", "<image>\n<image>\nSame?"), ("gpt", "No."), ("human", "Sure?"), ("gpt", "Yes."))},
    {"image": "c.jpg", "conversations": conv(("human", "Describe."), ("gpt", "Food."))},  # no id, no placeholder
    {"id": "two", "image": ["d.jpg", "e.jpg"], "category": "soup",
     "conversations": conv(("Human", "Compare."), ("GPT", "Same."))},  # capitalised roles, extra key
]


def llava_expected(src, root, dataset):
    def s(id, turns, images=(), extra=None):
        return Sample(id=id, source=src, dataset=dataset, turns=tuple(Turn(*t) for t in turns),
                      images=tuple(p if os.path.isabs(p) else os.path.join(root, p) for p in images),
                      extra=extra or {})
    return [
        s("one", [("user", "<image>\nWhat is it?"), ("assistant", "A cat.")], ["imgs/a.jpg"]),
        s("7", [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]),
        s("multi", [("user", "<image>\n<image>\nSame?"), ("assistant", "No."), ("user", "Sure?"),
                    ("assistant", "Yes.")], ["a.jpg", "/abs/b.png"]),
        s("3", [("user", "<image>\nDescribe."), ("assistant", "Food.")], ["c.jpg"]),
        s("two", [("user", "<image>\n<image>\nCompare."), ("assistant", "Same.")], ["d.jpg", "e.jpg"]),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_llava_rows_become_exact_samples(tmp_path, suffix):
    """Mixed text-only and image rows, str vs list 'image' (datasets unifies them), absolute paths kept."""
    path = tmp_path / f"train{suffix}"
    src = write_jsonl(path, LLAVA_ROWS) if suffix == ".jsonl" else write_json(path, LLAVA_ROWS)
    samples = read_samples(DatasetSource(src))
    assert samples == llava_expected(src, str(tmp_path), "train")
    assert [s.extra for s in samples] == [{}, {}, {}, {}, {"category": "soup"}]
    assert all(s.max_tiles is None for s in samples)


def test_image_root_name_and_max_tiles_come_from_the_source(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", LLAVA_ROWS)
    root = tmp_path / "pictures"
    samples = read_samples(DatasetSource(src, format="llava", image_root=str(root), name="food", max_tiles=4))
    expected = llava_expected(src, str(root), "food")
    assert samples == [Sample(**{**s.__dict__, "max_tiles": 4}) for s in expected]
    assert samples[2].images == (str(root / "a.jpg"), "/abs/b.png")


def test_relative_image_root_resolves_against_cwd(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "a.jsonl", LLAVA_ROWS[:1])
    monkeypatch.chdir(tmp_path)
    (sample,) = read_samples(DatasetSource(src, image_root="data/./imgs"))
    assert sample.images == (str(tmp_path / "data" / "imgs" / "imgs" / "a.jpg"),)


# ---------------------------------------------------------------------------------------------- ShareGPT

def test_messages_with_content_blocks_and_images(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "You see food."},
                      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What dish?"}]},
                      {"role": "assistant", "content": "Ramen."}],
         "images": ["r.jpg"]},
        {"messages": [{"role": "user", "content": "<image><image>Which is hotter?"},  # ms-swift: placeholders in text
                      {"role": "assistant", "content": [{"type": "text", "text": "The left."}]}],
         "images": ["l.jpg", "/abs/r.jpg"]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Compare"},
                                                   {"type": "image", "image": "inline.jpg"},
                                                   {"type": "image"}]},
                      {"role": "assistant", "content": "Equal."}],
         "images": ["listed.jpg"]},  # a block with a path keeps it; a bare block takes the next listed image
        {"messages": [{"role": "user", "content": "Just text"}, {"role": "assistant", "content": "OK"}]},
        {"messages": [{"role": "user", "content": "Look"}, {"role": "assistant", "content": "Nice"}],
         "images": ["p.jpg"]},  # no placeholder: prepended like LLaVA
    ]
    src = write_json(tmp_path / "sg.json", rows)
    samples = read_samples(DatasetSource(src, name="sg"))
    r = str(tmp_path)
    assert [(s.id, s.turns, s.images) for s in samples] == [
        ("0", (Turn("system", "You see food."), Turn("user", "<image>\nWhat dish?"), Turn("assistant", "Ramen.")),
         (f"{r}/r.jpg",)),
        ("1", (Turn("user", "<image><image>Which is hotter?"), Turn("assistant", "The left.")),
         (f"{r}/l.jpg", "/abs/r.jpg")),
        ("2", (Turn("user", "Compare\n<image>\n<image>"), Turn("assistant", "Equal.")),
         (f"{r}/inline.jpg", f"{r}/listed.jpg")),
        ("3", (Turn("user", "Just text"), Turn("assistant", "OK")), ()),
        ("4", (Turn("user", "<image>\nLook"), Turn("assistant", "Nice")), (f"{r}/p.jpg",)),
    ]
    assert {s.dataset for s in samples} == {"sg"} and {s.source for s in samples} == {src}


def test_llamafactory_sharegpt_conversations_with_images(tmp_path):
    rows = [{"conversations": conv(("human", "<image>Name it."), ("gpt", "Pho.")), "images": ["pho.jpg"]},
            {"conversations": conv(("human", "Hi"), ("gpt", "Hey")), "images": []}]
    src = write_jsonl(tmp_path / "lf.jsonl", rows)
    samples = read_samples(DatasetSource(src))
    assert samples == [
        Sample("0", src, "lf", (Turn("user", "<image>Name it."), Turn("assistant", "Pho.")),
               (str(tmp_path / "pho.jpg"),)),
        Sample("1", src, "lf", (Turn("user", "Hi"), Turn("assistant", "Hey"))),
    ]


# ------------------------------------------------------------------------------------ InternVL meta, repeat

def test_internvl_meta_mixes_datasets_with_fractional_repeats(tmp_path):
    (tmp_path / "ann").mkdir()
    write_jsonl(tmp_path / "ann" / "a.jsonl", qa(10, "a"))
    write_jsonl(tmp_path / "ann" / "b.jsonl", qa(4, "b"))
    meta = {"food": {"root": "images/food", "annotation": "ann/a.jsonl", "repeat_time": 0.5, "length": 10,
                     "max_dynamic_patch": 6},
            "ocr": {"root": "/data/ocr", "annotation": str(tmp_path / "ann" / "b.jsonl"), "repeat_time": 2.5}}
    src = write_json(tmp_path / "meta.json", meta)
    samples = read_samples(DatasetSource(src, max_tiles=12), seed=3)

    food = [s for s in samples if s.dataset == "food"]
    ocr = [s for s in samples if s.dataset == "ocr"]
    assert len(samples) == 5 + 10 and len(food) == 5 and len(ocr) == 10
    assert [s.id for s in food] == sorted(s.id for s in food) and len({s.id for s in food}) == 5  # file order kept
    assert [s.id for s in ocr[:8]] == ["b0", "b1", "b2", "b3"] * 2 and len({s.id for s in ocr[8:]}) == 2
    assert food[0].source == str(tmp_path / "ann" / "a.jsonl")
    assert food[0].images == (str(tmp_path / "images" / "food" / f"{food[0].id}.jpg"),)
    assert ocr[0].images == ("/data/ocr/b0.jpg",)
    assert {s.max_tiles for s in food} == {6} and {s.max_tiles for s in ocr} == {12}

    again = read_samples(DatasetSource(src, max_tiles=12), seed=3)
    assert [s.id for s in again] == [s.id for s in samples]
    other_seed = read_samples(DatasetSource(src), seed=4)
    assert [s.id for s in other_seed if s.dataset == "food"] != [s.id for s in food]
    assert len(other_seed) == 15


@pytest.mark.parametrize("repeat, count", [(0.0, 0), (0.3, 3), (1.0, 10), (2.3, 23), (1.99, 19), (3, 30)])
def test_repeat_counts(tmp_path, repeat, count):
    src = write_jsonl(tmp_path / "d.jsonl", qa(10))
    samples = read_samples(DatasetSource(src, repeat=repeat))
    assert len(samples) == count
    full = int(repeat)
    assert [s.id for s in samples[:10 * full]] == [f"q{i}" for i in range(10)] * full


def test_meta_repeat_multiplies_the_source_repeat(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", qa(10))
    src = write_json(tmp_path / "meta.json", {"a": {"root": "", "annotation": "a.jsonl", "repeat_time": 0.5}})
    assert len(read_samples(DatasetSource(src, repeat=3))) == 15


# ---------------------------------------------------------------------------------------- parquet, on disk

def test_parquet_and_save_to_disk_read_like_json(tmp_path):
    rows = [{"id": "p0", "image": ["x.jpg"], "conversations": conv(("human", "<image>\nA?"), ("gpt", "B"))},
            {"id": "p1", "image": [], "conversations": conv(("human", "C?"), ("gpt", "D"))}]
    ds = datasets.Dataset.from_list(rows)
    parquet = str(tmp_path / "t.parquet")
    ds.to_parquet(parquet)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))

    def expected(src, dataset):
        return [Sample("p0", src, dataset, (Turn("user", "<image>\nA?"), Turn("assistant", "B")),
                       (str(tmp_path / "x.jpg"),)),
                Sample("p1", src, dataset, (Turn("user", "C?"), Turn("assistant", "D")))]

    assert read_samples(DatasetSource(parquet)) == expected(parquet, "t")
    saved = str(tmp_path / "saved")
    assert read_samples(DatasetSource(saved)) == expected(saved, "saved")  # images beside the saved folder
    dd = str(tmp_path / "dd")
    assert read_samples(DatasetSource(dd)) == expected(dd, "dd")  # a DatasetDict: its train split


def test_image_feature_columns_give_paths_not_pixels(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    ds = datasets.Dataset.from_dict({"images": [[str(tmp_path / "x.png")]],
                                     "messages": [[{"role": "user", "content": "<image>hi"},
                                                   {"role": "assistant", "content": "yo"}]]})
    ds = ds.cast_column("images", datasets.List(datasets.Image()))
    ds.to_parquet(str(tmp_path / "img.parquet"))  # parquet keeps the path
    (sample,) = read_samples(DatasetSource(str(tmp_path / "img.parquet")))
    assert sample.images == (str(tmp_path / "x.png"),)

    ds.save_to_disk(str(tmp_path / "embedded"))  # save_to_disk embeds the bytes: reported, not decoded
    report = ReadReport()
    assert read_samples(DatasetSource(str(tmp_path / "embedded")), report=report) == []
    assert report.problems == [f"{tmp_path / 'embedded'}:0: 'images'[0] is image bytes embedded in the dataset; "
                               "vlft reads image files: write the images out and store their paths"]


# ----------------------------------------------------------------------------------------------- bad rows

BAD_ROWS = [
    ({"id": "r1", "conversations": conv(("human", "hi"), ("robot", "beep"))},
     "conversations[1] has unknown role 'robot': use human/user, gpt/assistant or system"),
    ({"id": "r2", "conversations": []}, "empty 'conversations'"),
    ({"id": "r3", "image": "x.jpg"}, "missing 'conversations'"),
    ({"id": "r4", "conversations": [{"from": "human", "value": "hi"}, {"value": "no role"}]},
     "conversations[1] has no 'from'"),
    ({"id": "r5", "conversations": [{"from": "human"}]}, "conversations[0] has no 'value'"),
    ({"id": "r6", "image": ["a.jpg", "b.jpg"], "conversations": conv(("human", "<image> one"), ("gpt", "x"))},
     "1 '<image>' placeholder(s) but 2 path(s) in 'image'"),
    ({"id": "r7", "conversations": conv(("human", "hi"), ("gpt", "<image>"))},
     "conversations[1] (assistant) contains '<image>': images go in user turns"),
    ({"id": "r8", "conversations": "hi"}, "'conversations' is a str, expected a list of turns"),
]


def test_each_bad_row_is_reported_with_file_and_id_and_skipped(tmp_path):
    good = qa(2)
    src = write_jsonl(tmp_path / "bad.jsonl", [good[0]] + [row for row, _ in BAD_ROWS] + [good[1]])
    report = ReadReport()
    samples = read_samples(DatasetSource(src), report=report)
    assert [s.id for s in samples] == ["q0", "q1"]
    assert report.problems == [f"{src}:{row['id']}: {why}" for row, why in BAD_ROWS]


def test_without_a_report_the_first_bad_row_raises(tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", qa(1) + [row for row, _ in BAD_ROWS[1:]])
    with pytest.raises(DataFormatError) as e:
        read_samples(DatasetSource(src))
    assert str(e.value) == f"{src}:r2: empty 'conversations'"
    assert isinstance(e.value, ValueError) and isinstance(e.value, DataError)


def test_bad_message_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            {"id": "m1", "messages": [{"role": "tool", "content": "x"}]},
            {"id": "m2", "messages": [{"content": "x"}]},
            {"id": "m3", "messages": [{"role": "user", "content": [{"type": "image"}]}], "images": []}]
    src = write_jsonl(tmp_path / "m.jsonl", rows)
    report = ReadReport()
    assert read_samples(DatasetSource(src, format="sharegpt"), report=report) == []
    assert report.problems == [
        f"{src}:0: messages[0] 'content'[0] has unsupported block type 'video': use 'text' or 'image'",
        f"{src}:m1: messages[0] has unknown role 'tool': use human/user, gpt/assistant or system",
        f"{src}:m2: messages[0] has no 'role'",
        f"{src}:m3: 1 '<image>' placeholder(s) but 0 path(s) in 'images'",
    ]


def test_rows_datasets_cannot_tabulate_fall_back_to_json(tmp_path):
    """A non-object row (or a blank line among mixed types) defeats datasets; the json module reads on."""
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(qa(1)[0]) + "\n\n" + "[1, 2]\n" + json.dumps(LLAVA_ROWS[2]) + "\n")
    report = ReadReport()
    samples = read_samples(DatasetSource(str(path)), report=report)
    assert [s.id for s in samples] == ["q0", "multi"]
    assert report.problems == [f"{path}:1: row is list, expected an object with 'conversations'"]


def test_mixed_turn_keys_are_unified_without_inventing_values(tmp_path):
    """datasets gives every turn every key seen in the column (others None): extra keys must not matter."""
    rows = [{"id": "a", "conversations": [{"from": "human", "value": "hi", "loss": 0}, {"from": "gpt", "value": "x"}]},
            {"id": "b", "conversations": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "y"}]}]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert [s.turns for s in read_samples(DatasetSource(src))] == [
        (Turn("user", "hi"), Turn("assistant", "x")), (Turn("user", "hey"), Turn("assistant", "y"))]


# ---------------------------------------------------------------------------------------------- bad files

def test_missing_file_is_an_error_even_with_a_report(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataFormatError, match=f"^{missing}: file not found"):
        read_samples(DatasetSource(missing), report=ReadReport())


@pytest.mark.parametrize("name, text, message", [
    ("broken.jsonl", '{"id": 1, "conversations": []}\n{"id": \n', "line 2 is not valid JSON"),
    ("broken.json", '[{"id": 1}, ', "not valid JSON"),
    ("obj.json", '{"id": 1, "conversations": []}', "a JSON object that is not an InternVL meta"),
    ("data.csv", "id,text\n", "unsupported file type '.csv'"),
])
def test_unreadable_files_name_the_file(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataFormatError) as e:
        read_samples(DatasetSource(str(tmp_path / name)), report=ReadReport())
    assert str(e.value).startswith(f"{tmp_path / name}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_format_and_bad_meta_entries(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", [{"id": 1, "text": "hello"}])
    with pytest.raises(DataFormatError, match=r"x.jsonl: cannot tell the dataset format from keys \[id, text\]"):
        read_samples(DatasetSource(src))
    meta = write_json(tmp_path / "meta.json", {"a": {"root": "r"}})
    with pytest.raises(DataFormatError, match=r"meta.json: dataset 'a': missing 'annotation'"):
        read_samples(DatasetSource(meta, format="internvl_meta"))
    meta = write_json(tmp_path / "meta2.json", {"a": {"root": "r", "annotation": "gone.jsonl"}})
    gone = r"gone.jsonl: file not found \(the 'annotation' of 'a' in .*meta2.json\)"
    with pytest.raises(DataFormatError, match=gone):
        read_samples(DatasetSource(meta))
    with pytest.raises(DataFormatError, match="repeat must be a finite number >= 0"):
        read_samples(DatasetSource(src, repeat=-1))


def test_empty_file_gives_no_samples(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert read_samples(DatasetSource(str(tmp_path / "empty.jsonl"))) == []


# -------------------------------------------------------------------------------------- detection, read_all

@pytest.mark.parametrize("row, fmt", [
    ({"id": "1", "image": "a.jpg", "conversations": []}, "llava"),
    ({"conversations": []}, "llava"),
    ({"image": None, "images": None, "conversations": []}, "llava"),
    ({"conversations": [], "images": ["a.jpg"]}, "sharegpt"),
    ({"messages": [], "images": []}, "sharegpt"),
    ({"messages": []}, "sharegpt"),
    ({"food": {"root": "/x", "annotation": "a.jsonl", "repeat_time": 1}}, "internvl_meta"),
])
def test_detect_format(row, fmt):
    assert detect_format(row) == fmt


def test_detect_format_names_the_keys_it_saw():
    with pytest.raises(DataFormatError, match=r"keys \[prompt, response\]"):
        detect_format({"prompt": "x", "response": "y"})


def test_read_all_concatenates_sources_and_shares_the_report(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", qa(3, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa(2, "b") + [{"id": "bad", "conversations": []}])
    report = ReadReport()
    samples = read_all([DatasetSource(a), DatasetSource(b, repeat=2)], report=report)
    assert [s.id for s in samples] == ["a0", "a1", "a2", "b0", "b1", "b0", "b1"]
    assert report.problems == [f"{b}:bad: empty 'conversations'"]


def test_reading_leaves_no_cache_and_keeps_progress_bar_state(tmp_path):
    cache = datasets.config.HF_DATASETS_CACHE
    before = sorted(os.listdir(cache)) if os.path.isdir(cache) else []
    bars_off = datasets.utils.are_progress_bars_disabled()
    read_samples(DatasetSource(write_jsonl(tmp_path / "c.jsonl", qa(3))))
    assert (sorted(os.listdir(cache)) if os.path.isdir(cache) else []) == before
    assert datasets.utils.are_progress_bars_disabled() == bars_off
