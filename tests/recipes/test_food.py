"""The food recipe: FoodieQA layout -> vlft rows that check-data passes and eval scores; the configs load."""
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from vlft.config import load_config
from vlft.data.formats import DatasetSource, read_samples
from vlft.infer.evaluate import read_eval_file

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "food"


def _converter():
    spec = importlib.util.spec_from_file_location("convert_foodieqa", RECIPE / "convert_foodieqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(qid, food, image, answer, qtype, choices_en):
    """A question in the layout of FoodieQA's sivqa_tidy.json."""
    return {
        "question_id": qid, "question": "图片中的食物是哪个地区的特色美食？",
        "choices": ["川", "粤", "苏", "鲁"],
        "answer": str(answer), "question_type": qtype, "food_name": food,
        "question_en": "Which region is the food in the picture a speciality of?", "choices_en": choices_en,
        "food_meta": {"main_ingredient": ["pork"], "id": qid, "food_name": food, "food_type": "main-bao",
                      "food_location": "粤", "food_file": f"images/{image}"},
    }


@pytest.fixture()
def foodieqa(tmp_path):
    root = tmp_path / "FoodieQA"
    (root / "images").mkdir(parents=True)
    for i, color in enumerate([(200, 40, 30), (30, 150, 60), (220, 200, 60)]):
        Image.new("RGB", (80, 60), color).save(root / "images" / f"{i}.jpg")
    regions = ["Sichuan", "Guangdong", "Jiangsu", "Shandong"]
    items = [_item("0", "叉烧包", "0.jpg", 1, "region-2", regions),
             _item("1", "叉烧包", "0.jpg", 0, "ingredients", ["pork", "beef", "tofu", "fish"]),
             _item("2", "麻婆豆腐", "1.jpg", 0, "region-2", regions),
             _item("3", "小笼包", "2.jpg", 2, "region-2", regions)]
    (root / "sivqa_tidy.json").write_text(json.dumps(items, ensure_ascii=False))
    return root


def test_converter_writes_rows_that_read_and_score(foodieqa, tmp_path):
    out = tmp_path / "food"
    assert _converter().main(["--foodieqa", str(foodieqa), "--out", str(out)]) == 0
    rows = json.loads((out / "foodieqa_eval.json").read_text())
    assert len(rows) == 4 and not (out / "foodieqa_train.json").exists()  # evaluation only by default
    first = rows[0]
    assert first["answer"] == "B" and first["category"] == "region-2" and first["choices"][1] == "Guangdong"
    assert first["conversations"][0]["value"].startswith("<image>\nWhich region is the food")
    assert "\nB. Guangdong\n" in first["conversations"][0]["value"]
    assert first["conversations"][1] == {"from": "gpt", "value": "B"}
    assert Path(first["image"]).is_absolute() and Path(first["image"]).is_file()

    samples = read_samples(DatasetSource(str(out / "foodieqa_eval.json")))
    assert [s.extra["answer"] for s in samples] == ["B", "A", "A", "C"]
    items = read_eval_file(out / "foodieqa_eval.json")
    assert [i.answer_index for i in items] == [1, 0, 0, 2]
    assert {i.category for i in items} == {"region-2", "ingredients"}


def test_converted_rows_pass_check_data(foodieqa, tmp_path, tiny_dir, capsys):
    from vlft.engine.check_data import check_data_from_config

    out = tmp_path / "food"
    _converter().main(["--foodieqa", str(foodieqa), "--out", str(out), "--train-fraction", "0.5"])
    train, evaluation = out / "foodieqa_train.json", out / "foodieqa_eval.json"
    train_images = {r["image"] for r in json.loads(train.read_text())}
    assert train_images and not train_images & {r["image"] for r in json.loads(evaluation.read_text())}
    for data in (train, evaluation):
        code = check_data_from_config(RECIPE / "internvl2_2b_food_lora.py", cfg_options=[
            f"model.path={tiny_dir['internvl_chat_internlm2']}", f"data.datasets=[{{'path': '{data}'}}]"])
        assert code == 0, capsys.readouterr().out


def test_chinese_questions(foodieqa, tmp_path):
    out = tmp_path / "zh"
    assert _converter().main(["--foodieqa", str(foodieqa), "--out", str(out), "--lang", "zh"]) == 0
    row = json.loads((out / "foodieqa_eval.json").read_text())[0]
    assert row["choices"] == ["川", "粤", "苏", "鲁"] and "图片中的食物" in row["conversations"][0]["value"]


def test_bad_release_is_one_line(foodieqa, tmp_path, capsys):
    items = json.loads((foodieqa / "sivqa_tidy.json").read_text())
    del items[2]["choices_en"]
    (foodieqa / "sivqa_tidy.json").write_text(json.dumps(items))
    assert _converter().main(["--foodieqa", str(foodieqa), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {foodieqa / 'sivqa_tidy.json'}:2: missing or empty 'choices_en'"
    assert _converter().main(["--foodieqa", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("name", ["internvl2_2b_food_lora.py", "internvl2_2b_food_qlora.py"])
def test_food_configs_load_with_internvl_lora_settings(name):
    spec = load_config(RECIPE / name)
    assert spec.model.family == "internvl" and spec.data.template == "internlm2-chat"
    tiling = spec.data.tiling
    assert (tiling.mode, tiling.max_tiles, tiling.use_thumbnail) == ("dynamic", 6, True)
    assert spec.model.connector.train and spec.model.vision.train == "frozen"
    assert spec.engine.deepspeed == "zero2" and spec.model.dtype == "bfloat16"
    assert 16 <= spec.model.llm.lora.r <= 128
    if "qlora" in name:
        assert spec.model.llm.quantization.bits == 4 and spec.model.llm.quantization.quant_type == "nf4"
    else:
        assert spec.model.llm.quantization is None and spec.schedule.lr == 4e-5
