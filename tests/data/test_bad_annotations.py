"""Annotation files and rows that are wrong in ways users meet: one line naming the file, or a counted warning."""
import json

import pytest

from vlft.data.formats import DatasetSource, DataFormatError, ReadReport, normalize_turns, read_samples
from vlft.data.problems import IMAGE_OUTSIDE_ROOT, LEADING_ASSISTANT, USER_TURNS_MERGED
from vlft.data.record import Turn

ROW = {"id": "x", "conversations": [{"from": "human", "value": "Un caf\u00e9 ?"}, {"from": "gpt", "value": "Oui."}]}


def _error(path, **source) -> str:
    with pytest.raises(DataFormatError) as error:
        read_samples(DatasetSource(str(path), **source), report=ReadReport())
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


@pytest.mark.battery("annotations", was="traceback")
@pytest.mark.parametrize("name", ["latin1.json", "latin1.jsonl"])
def test_a_latin1_annotation_file_is_one_line_naming_the_file_the_byte_and_the_fix(tmp_path, name):
    text = json.dumps([ROW] if name.endswith(".json") else ROW, ensure_ascii=False) + "\n"
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    message = _error(path)
    assert f"byte 0xe9 at offset {offset} (line 1) is not UTF-8" in message and "save it as UTF-8" in message


@pytest.mark.battery("annotations", was="traceback")
def test_a_utf16_annotation_file_is_named_as_utf16(tmp_path):
    path = tmp_path / "wide.json"
    path.write_bytes(json.dumps([ROW]).encode("utf-16"))
    assert "it is UTF-16" in _error(path)


@pytest.mark.battery("annotations", was="traceback")
def test_a_binary_file_named_json_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(bytes(range(256)))
    assert "byte 0x80 at offset 128 (line 2) is not UTF-8" in _error(path)


@pytest.mark.battery("annotations", was="traceback")
def test_a_latin1_annotation_behind_an_internvl_meta_names_the_annotation_file(tmp_path):
    (tmp_path / "part.jsonl").write_bytes((json.dumps(ROW, ensure_ascii=False) + "\n").encode("latin-1"))
    (tmp_path / "meta.json").write_text(json.dumps({"part": {"annotation": "part.jsonl", "root": "."}}))
    with pytest.raises(DataFormatError, match=f"^{tmp_path / 'part.jsonl'}: not UTF-8 text"):
        read_samples(DatasetSource(str(tmp_path / "meta.json")), report=ReadReport())


@pytest.mark.battery("annotations", was="silent")
def test_an_internvl_meta_file_with_a_byte_order_mark_is_read_as_a_meta(tmp_path):
    (tmp_path / "part.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW).encode() + b"\n")
    meta = tmp_path / "meta.json"
    meta.write_bytes(b"\xef\xbb\xbf" + json.dumps({"part": {"annotation": "part.jsonl", "root": "."}}).encode())
    samples = read_samples(DatasetSource(str(meta)))
    assert [(s.dataset, s.turns[0].text) for s in samples] == [("part", "Un caf\u00e9 ?")]


# Already one line before this round; kept as guards beside the cases above.
@pytest.mark.parametrize("name, content, message", [
    ("fake.parquet", b"PAR1 but not really", "cannot be read as a parquet file"),
    ("three.json", b"3", "the top level is a int, expected a list of samples"),
    ("text.json", b'"hello"', "the top level is a str, expected a list of samples"),
    ("gap.jsonl", json.dumps(ROW).encode() + b"\n{\"id\": 2,\n" + json.dumps(ROW).encode() + b"\n",
     "line 2 is not valid JSON"),
])
def test_files_that_are_not_what_their_name_says_are_one_line_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert message in _error(path)


# ------------------------------------------------------------------------------------- conversation shape

def test_leading_assistant_turns_are_dropped_and_user_turns_in_a_row_merged_as_xtuner_does():
    turns, notes = normalize_turns((Turn("system", "Be brief."), Turn("assistant", "Hello! Ask me."),
                                    Turn("user", "<image>"), Turn("user", "What is it?"), Turn("assistant", "Soup."),
                                    Turn("user", "Hot?"), Turn("assistant", "Yes.")))
    assert turns == (Turn("system", "Be brief."), Turn("user", "<image>\nWhat is it?"), Turn("assistant", "Soup."),
                     Turn("user", "Hot?"), Turn("assistant", "Yes."))
    assert [kind for kind, _ in notes] == [LEADING_ASSISTANT, USER_TURNS_MERGED]
    plain = (Turn("user", "a"), Turn("assistant", "b"))
    assert normalize_turns(plain) == (plain, [])


@pytest.mark.battery("annotations", was="silent")
def test_odd_conversations_and_an_image_path_leaving_image_root_are_reported_by_file_and_id(tmp_path):
    rows = [
        {"id": "greeter", "conversations": [{"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "q"},
                                            {"from": "gpt", "value": "a"}]},
        {"id": "twice", "image": "img/a.png",
         "conversations": [{"from": "human", "value": "look"}, {"from": "human", "value": "what is it?"},
                           {"from": "gpt", "value": "a"}]},
        {"id": "escape", "image": "../elsewhere/b.png",
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "inside", "image": "img/../img/c.png",
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    path = tmp_path / "data" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(rows))
    report = ReadReport()
    samples = read_samples(DatasetSource(str(path)), report=report)
    assert [s.id for s in samples] == ["greeter", "twice", "escape", "inside"]  # all kept
    assert [(w.kind, w.where) for w in report.warnings] == [
        (LEADING_ASSISTANT, f"{path}:greeter"), (USER_TURNS_MERGED, f"{path}:twice"),
        (IMAGE_OUTSIDE_ROOT, f"{path}:escape")]
    assert "'../elsewhere/b.png'" in report.warnings[2].line and str(tmp_path / "elsewhere" / "b.png") in \
        report.warnings[2].line
    assert samples[1].turns[0].text == "<image>\nlook\nwhat is it?"  # the image stays with the merged turn
    assert samples[0].turns[0] == Turn("user", "q")
