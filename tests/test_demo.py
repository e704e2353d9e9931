"""`vlft demo`, shortened: the tiny model learns to read the dish from the image, and every stage's output agrees."""
import json

import pytest
from click.testing import CliRunner

from vlft.cli import main
from vlft.demo import DEMO_MARKER, DemoPlan, run_demo
from vlft.infer.evaluate import evaluate_model, read_eval_file
from vlft.infer.loading import load_for_inference

SHORT = DemoPlan(n_train=400, n_test=24, steps=120)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines = []
    result = run_demo(tmp_path_factory.mktemp("demo") / "work", plan=SHORT, echo=lines.append)
    return result, "\n".join(lines)


def test_short_demo_learns_what_only_the_image_tells(demo):
    result, printed = demo
    assert result.chance == 0.25
    assert result.after.accuracy >= result.chance + 0.25, result.table
    assert result.after.accuracy > result.before.accuracy
    assert result.after.unparseable == 0
    assert result.table in printed and "before" in result.table and "change" in result.table
    assert f"loss curve:   {result.loss_plot}" in printed and result.loss_plot.is_file()
    for stage in ("[3/7] check-data", "[4/7] train", "[5/7] merge", "[6/7] convert"):
        assert stage in printed
    assert "verify (hf)" in printed and "greedy 16/16 tokens equal" in printed
    records = [json.loads(line) for line in (result.work_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * SHORT.n_test


def test_checkpoint_merged_and_converted_answer_alike(demo):
    result, _ = demo
    items = read_eval_file(result.work_dir / "data" / "test.json")[:8]
    replies = {}
    for path in (result.checkpoint, result.merged, result.converted):
        model, pipeline = load_for_inference(path)
        report = evaluate_model(model, pipeline, items, name=str(path), batch_size=8, max_new_tokens=8, progress=False)
        replies[path] = [p.reply for p in report.predictions]
    assert replies[result.checkpoint] == replies[result.merged] == replies[result.converted]
    assert replies[result.converted] == [p.reply for p in result.after.predictions[:8]]


def test_rerun_clears_only_a_demo_folder(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(main, ["demo", "--work-dir", str(other)])
    assert result.exit_code != 0 and str(other) in result.stderr and "not written by `vlft demo`" in result.stderr
    assert (other / "thesis.tex").read_text() == "precious" and not (other / DEMO_MARKER).exists()
