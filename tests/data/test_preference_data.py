"""Preference data: LLaMA-Factory's, InternVL MPO's and messages + chosen/rejected read into pairs, each side
encoded exactly as SFT encodes the same conversation, bad pairs one line each in check-data."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.config import load_config
from vlft.data.dataset import SupervisedDataset, pipeline_from_spec
from vlft.data.formats import DatasetSource, ReadReport, detect_format, read_all, read_preference_pairs
from vlft.data.pair_dataset import build_pair_dataset, pair_collate
from vlft.errors import ConfigError
from vlft.model.facts import model_facts


def _image(root: Path, name: str, rgb=(200, 30, 30)) -> str:
    Image.new("RGB", (60, 56), rgb).save(root / name)
    return name


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def _formats(root: Path) -> dict[str, Path]:
    """The same two pairs in each preference format."""
    image = _image(root, "a.png")
    return {
        "llamafactory_pairs": _write(root / "lf.json", [
            {"conversations": [{"from": "human", "value": "<image>What colour?"}], "images": [image],
             "chosen": {"from": "gpt", "value": "red"}, "rejected": {"from": "gpt", "value": "blue"}},
            {"conversations": [{"from": "human", "value": "And now?"}], "images": [],
             "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}}]),
        "internvl_mpo": _write(root / "mpo.jsonl", [
            {"question": "<image>What colour?", "image": image, "chosen": "red", "rejected": "blue"},
            {"question": "And now?", "chosen": "yes", "rejected": "no"}]),
        "messages_pairs": _write(root / "messages.json", [
            {"messages": [{"role": "user", "content": "<image>What colour?"}], "images": [image],
             "chosen": [{"role": "assistant", "content": "red"}], "rejected": "blue"},
            {"messages": [{"role": "user", "content": "And now?"}], "images": [],
             "chosen": "yes", "rejected": [{"role": "assistant", "content": "no"}]}]),
    }


def test_each_preference_format_is_told_by_its_keys_and_reads_into_the_same_pairs(tmp_path):
    read = {}
    for name, path in _formats(tmp_path).items():
        rows = json.loads(path.read_text()) if path.suffix == ".json" else \
            [json.loads(line) for line in path.read_text().splitlines()]
        assert detect_format(rows[0]) == name
        read[name] = [(p.prompt, p.chosen, p.rejected, p.images)
                      for p in read_preference_pairs([DatasetSource(str(path))])]
    first = read["llamafactory_pairs"]
    assert [pair[1:3] for pair in first] == [("red", "blue"), ("yes", "no")]
    assert first[0][3] == (str(tmp_path / "a.png"),)
    assert read["messages_pairs"] == first
    # InternVL's MPO question keeps its own placeholder; the text is the same turn otherwise
    assert [pair[1:] for pair in read["internvl_mpo"]] == [pair[1:] for pair in first]


@pytest.mark.parametrize("row, line", [
    ({"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": None}, "no 'rejected' answer"),
    ({"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "same"},
      "rejected": {"from": "gpt", "value": "same"}}, "'chosen' and 'rejected' are the same answer: the pair teaches nothing"),
    ({"conversations": [{"from": "human", "value": "<image><image>Q?"}], "images": ["a.png"],
      "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
     "2 '<image>' placeholder(s) but 1 path(s) in 'images'"),
])
def test_a_bad_pair_is_one_line_naming_the_file_and_the_pair_in_check_data(tmp_path, tiny_dir, row, line):
    _image(tmp_path, "a.png")
    good = {"conversations": [{"from": "human", "value": "Q?"}], "chosen": {"from": "gpt", "value": "a"},
            "rejected": {"from": "gpt", "value": "b"}, "images": []}
    data = _write(tmp_path / "pairs.json", [{**good, "id": "ok"}, {"images": [], **row, "id": "bad-7"}])
    config = tmp_path / "run.py"
    config.write_text(f"model = {{'family': 'internvl', 'path': {str(tiny_dir['internvl_hf'])!r}}}\n"
                      f"data = {{'datasets': [{{'path': {str(data)!r}}}], 'max_length': 512}}\n"
                      "schedule = {'objective': 'dpo'}\n")
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 1, result.output
    problems = [text.strip() for text in result.output.splitlines() if "bad-7" in text]
    assert problems == [f"{data}:bad-7: {line}"]
    assert "1 pair usable" in result.output and "FAILED" in result.output


def test_both_sides_of_a_pair_are_encoded_exactly_as_sft_encodes_them_and_batch_chosen_then_rejected(
        tmp_path, tiny_dir):
    path = _formats(tmp_path)["llamafactory_pairs"]
    spec = load_config_for(tmp_path, tiny_dir["internvl_hf"], path)
    info, tokenizer = model_facts(spec.model)
    pairs_data = build_pair_dataset(spec, tokenizer, info)
    pairs = read_preference_pairs([DatasetSource(str(path))])
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    for side in ("chosen", "rejected"):
        sft = SupervisedDataset([p.as_sample(getattr(p, side)) for p in pairs], pipeline)
        for i in range(len(pairs)):
            assert torch.equal(pairs_data[i][side]["input_ids"], sft[i]["input_ids"])
            assert torch.equal(pairs_data[i][side]["labels"], sft[i]["labels"])
            assert torch.equal(pairs_data[i][side]["pixel_values"], sft[i]["pixel_values"])
    batch = pair_collate([pairs_data[0], pairs_data[1]], pad_token_id=0)
    assert batch["input_ids"].shape[0] == 4
    assert torch.equal(batch["labels"][2, :len(pairs_data[0]["rejected"]["labels"])], pairs_data[0]["rejected"]["labels"])
    assert batch["pixel_values"].shape[0] == 2 * pairs_data[0]["chosen"]["pixel_values"].shape[0]


def test_packing_with_a_preference_objective_is_refused_in_one_line(tmp_path, tiny_dir):
    path = _formats(tmp_path)["internvl_mpo"]
    with pytest.raises(ConfigError, match=r"run.py: data.packing=True and schedule.objective='mpo' contradict: .*"
                                          r"set data.packing=False$"):
        load_config_for(tmp_path, tiny_dir["internvl_hf"], path, objective="mpo", packing=True)


def test_preference_data_trained_as_sft_says_to_set_the_objective(tmp_path, tiny_dir):
    path = _formats(tmp_path)["messages_pairs"]
    spec = load_config_for(tmp_path, tiny_dir["internvl_hf"], path, objective="sft")
    report = ReadReport()
    with pytest.raises(ValueError, match="a preference file .* schedule.objective='dpo'"):
        read_all([DatasetSource(str(path))], report=report)
    assert spec.schedule.objective == "sft"


def load_config_for(root: Path, base: Path, data: Path, *, objective: str = "dpo", packing: bool = False):
    config = root / "run.py"
    config.write_text(f"model = {{'family': 'internvl', 'path': {str(base)!r}}}\n"
                      f"data = {{'datasets': [{{'path': {str(data)!r}}}], 'max_length': 512, 'packing': {packing}}}\n"
                      f"schedule = {{'objective': {objective!r}}}\n")
    return load_config(config)


def test_an_internvl_meta_lists_mpo_files_as_it_lists_sft_ones(tmp_path):
    path = _formats(tmp_path)["internvl_mpo"]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"mmpr_part": {"root": str(tmp_path), "annotation": str(path), "repeat_time": 2}}))
    for fmt in ("internvl_mpo", "auto"):
        pairs = read_preference_pairs([DatasetSource(str(meta), format=fmt)])
        assert [(p.dataset, p.chosen) for p in pairs] == [("mmpr_part", "red"), ("mmpr_part", "yes")] * 2


def test_ms_swift_rejected_response_takes_the_last_assistant_turn_as_the_chosen_answer(tmp_path):
    path = _write(tmp_path / "swift.jsonl", [{"messages": [{"role": "user", "content": "Q?"},
                                                            {"role": "assistant", "content": "good"}],
                                               "rejected_response": "bad"}])
    [pair] = read_preference_pairs([DatasetSource(str(path))])
    assert (pair.prompt[-1].text, pair.chosen, pair.rejected) == ("Q?", "good", "bad")
