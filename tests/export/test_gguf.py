"""`vlft convert --to gguf`: refusals, the missing converter, staging, and the Ollama Modelfile (always run, with a
stand-in converter script that only writes files); llama.cpp's own converter and llama.cpp answering like `vlft
chat` (opt-in: VLFT_LLAMA_CPP_PYTHON, a python with llama-cpp-python, and LLAMA_CPP_DIR, its llama.cpp source;
see tools/bench/README.md)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlft.cli import main
from vlft.data.encode import encode_prompt
from vlft.data.record import Turn
from vlft.data.templates import get_template
from vlft.families import INTERNVL

ROOT = Path(__file__).resolve().parents[2]
TINY_CONVERTER = Path(__file__).with_name("gguf_tiny_converter.py")

#: A converter stand-in: writes a few bytes to --outfile (and fails when told to, after a half-written file).
FAKE_CONVERTER = '''
import sys, os
out = sys.argv[sys.argv.index("--outfile") + 1]
open(out, "wb").write(b"GGUF" + b"\\0" * 16)
if os.environ.get("FAKE_CONVERTER_FAILS"):
    print("INFO:hf-to-gguf:Loading model: .converter-input", file=sys.stderr)
    print("NotImplementedError: Architecture 'InternVLChatModel' not supported!", file=sys.stderr)
    sys.exit(1)
'''


@pytest.fixture
def fake_llama_cpp(tmp_path):
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    (tree / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    return tree


def _convert(ckpt, out, *extra):
    return CliRunner().invoke(main, ["convert", str(ckpt), str(out), "--to", "gguf", *extra])


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


@pytest.mark.parametrize("checkpoint, says", [
    ("llava_lora", "LLaVA model: llama.cpp's convert_hf_to_gguf.py --mmproj has no LLaVA-1.5 projector"),
    ("smolvlm_lora", "SmolVLM model: llama.cpp's converter reads Idefics3/SmolVLM (its IDEFICS3 mmproj), but vlft "
                     "does not write it yet")])
def test_a_family_vlft_does_not_write_as_gguf_is_refused_in_one_line_naming_why(train_ckpt, tmp_path, fake_llama_cpp,
                                                                                checkpoint, says):
    out = tmp_path / "out"
    result = _convert(train_ckpt(checkpoint), out, "--llama-cpp", str(fake_llama_cpp))
    assert result.exit_code != 0
    assert says in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _leftovers(out) == []


def test_without_a_converter_one_line_says_how_to_get_one_and_nothing_is_written(train_ckpt, tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    out = tmp_path / "out"
    result = _convert(train_ckpt("chat_qwen2_gguf_lora"), out)
    assert result.exit_code != 0
    assert "pass --llama-cpp DIR or set LLAMA_CPP_DIR" in result.output and "pip download" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _leftovers(out) == []


def test_a_folder_without_the_converter_is_named(train_ckpt, tmp_path):
    result = _convert(train_ckpt("chat_qwen2_gguf_lora"), tmp_path / "out", "--llama-cpp", str(tmp_path))
    assert result.exit_code != 0 and f"{tmp_path}: no convert_hf_to_gguf.py there" in result.output


def test_a_converter_that_cannot_read_the_layout_fails_in_one_line_and_leaves_nothing_half_written(
        train_ckpt, tmp_path, fake_llama_cpp, monkeypatch):
    monkeypatch.setenv("FAKE_CONVERTER_FAILS", "1")
    out = tmp_path / "out"
    result = _convert(train_ckpt("chat_qwen2_gguf_lora"), out, "--llama-cpp", str(fake_llama_cpp))
    assert result.exit_code != 0
    assert "NotImplementedError: Architecture 'InternVLChatModel' not supported!" in result.output
    assert _leftovers(out) == []  # neither OUT nor OUT.tmp-<pid> with the half-written GGUF


def test_a_tower_of_fewer_than_4_layers_is_refused_in_one_line_before_the_converter_runs(train_ckpt, tmp_path,
                                                                                          fake_llama_cpp):
    out = tmp_path / "out"
    result = _convert(train_ckpt("chat_qwen2_lora"), out, "--llama-cpp", str(fake_llama_cpp))
    assert result.exit_code != 0
    assert "the vision tower has 2 layer(s); llama.cpp's converter names the projector's mlp1.3" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _leftovers(out) == []


def test_quantize_without_llama_quantize_is_one_line(train_ckpt, tmp_path, fake_llama_cpp, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    result = _convert(train_ckpt("chat_qwen2_gguf_lora"), out, "--llama-cpp", str(fake_llama_cpp), "--quantize", "q4_k_m")
    assert result.exit_code != 0 and "--quantize needs llama-quantize" in result.output
    assert _leftovers(out) == []


# ------------------------------------------------------------------------------------------------
# The Modelfile, read as Ollama would: FROM lines, and the TEMPLATE run by a reader of its Go-template subset


def _go_render(template: str, system: str, messages: list[dict]) -> str:
    """Ollama's rendering of the subset a vlft Modelfile uses: if/else/end, eq .Role, range .Messages, fields."""
    tokens = re.split(r"({{.*?}})", template)
    pos = 0

    def block(scope: dict, stop: tuple[str, ...]) -> tuple[str, str]:
        nonlocal pos
        text = []
        while pos < len(tokens):
            token = tokens[pos]
            pos += 1
            if not token.startswith("{{"):
                text.append(token)
                continue
            action = token[2:-2].strip()
            if action in stop or action.startswith("else if") and "else" in stop:
                return "".join(text), action
            if action.startswith("if "):
                text.append(conditional(scope, action[3:]))
            elif action == "range .Messages":
                start, out = pos, []
                for message in messages:
                    pos = start
                    out.append(block({**scope, **message}, ("end",))[0])
                if not messages:
                    block(scope, ("end",))
                text.append("".join(out))
            elif action.startswith("."):
                text.append(scope[action[1:]])
            else:
                raise AssertionError(f"unexpected action {action!r}")
        return "".join(text), ""

    def test(scope, condition) -> bool:
        if condition.startswith("eq "):
            field, value = condition[3:].split(" ", 1)
            return scope[field[1:]] == json.loads(value)
        return bool(scope[condition[1:]])

    def conditional(scope, condition) -> str:
        taken = None
        while True:
            body, ended = block(scope, ("else", "end"))
            if taken is None and test(scope, condition):
                taken = body
            if ended == "end":
                return taken or ""
            if ended.startswith("else if"):
                condition = ended[len("else if "):]
            else:  # plain else
                body, _ = block(scope, ("end",))
                return taken if taken is not None else body

    return block({"System": system}, ())[0]


def _modelfile(path: Path) -> dict:
    text = path.read_text()
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    return {"from": re.findall(r"^FROM (.+)$", text, re.M), "template": template,
            "stop": [json.loads(s) for s in re.findall(r"^PARAMETER stop (.+)$", text, re.M)]}


#: checkpoint -> (its template, the Modelfile's stop strings)
MODELFILE_CASES = {"chat_qwen2_gguf_lora": ("internvl2_5", ["<|im_end|>", "<|endoftext|>"]),
                   "chat_internlm2_gguf_lora": ("internlm2-chat", ["<|im_end|>"])}


@pytest.fixture(scope="module", params=list(MODELFILE_CASES))
def gguf_out(request, train_ckpt, tmp_path_factory):
    """(OUT of --to gguf with the stand-in converter, the checkpoint's name)."""
    tree = tmp_path_factory.mktemp("llama_cpp")
    (tree / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    out = tmp_path_factory.mktemp("gguf") / "food"
    result = _convert(train_ckpt(request.param), out, "--llama-cpp", str(tree))
    assert result.exit_code == 0, result.output
    return out, request.param


def test_the_export_writes_both_gguf_files_the_modelfile_and_the_tiling_line(gguf_out, train_ckpt):
    out, checkpoint = gguf_out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["Modelfile", "food-f16.gguf", "mmproj-food-f16.gguf", "vlft_gguf.json"]
    record = json.loads((out / "vlft_gguf.json").read_text())
    assert record["source"] == str(train_ckpt(checkpoint).resolve())
    assert "no larger than 56x56 px" in record["tiling_warning"]


def test_the_modelfile_names_existing_files_and_the_templates_stop_tokens(gguf_out):
    out, checkpoint = gguf_out
    modelfile = _modelfile(out / "Modelfile")
    assert modelfile["from"] == ["./food-f16.gguf", "./mmproj-food-f16.gguf"]
    assert all((out / name).is_file() for name in modelfile["from"])
    assert modelfile["stop"] == MODELFILE_CASES[checkpoint][1]


@pytest.mark.parametrize("system", ["", "You are a food expert."])
def test_the_modelfile_template_renders_the_training_prompt_ids_of_a_two_turn_conversation(gguf_out, train_ckpt,
                                                                                          system):
    from transformers import AutoTokenizer

    out, checkpoint = gguf_out
    tokenizer = AutoTokenizer.from_pretrained(train_ckpt(checkpoint))
    turns = [Turn("user", "What dish is this?"), Turn("assistant", "Dumplings."), Turn("user", "And the sauce?")]
    template = get_template(MODELFILE_CASES[checkpoint][0])
    training = encode_prompt(turns, tokenizer, template, image_tokens=INTERNVL.image_tokens, tokens_per_image=[],
                             system_prompt=system or None)
    rendered = _go_render(_modelfile(out / "Modelfile")["template"], system,
                          [{"Role": t.role, "Content": t.text} for t in turns])
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == training


# ------------------------------------------------------------------------------------------------
# llama.cpp itself (opt-in)

LLAMA_CPP_PYTHON = os.environ.get("VLFT_LLAMA_CPP_PYTHON")
LLAMA_CPP_DIR = os.environ.get("LLAMA_CPP_DIR")
needs_llama_cpp = pytest.mark.skipif(
    not (LLAMA_CPP_PYTHON and Path(LLAMA_CPP_PYTHON).exists() and LLAMA_CPP_DIR),
    reason="set VLFT_LLAMA_CPP_PYTHON (a python with llama-cpp-python) and LLAMA_CPP_DIR (its llama.cpp source; "
           "see tools/bench/README.md) to run llama.cpp")

#: Held-out odd sizes no larger than the 56 px tile, near square: where llama.cpp tiles as training did.
ODD_SIZES = [(41, 47), (53, 45), (55, 55), (47, 39), (49, 43), (37, 31), (51, 53), (45, 56)]


@pytest.fixture(scope="module")
def real_converter(tmp_path_factory):
    """llama.cpp's converter, unchanged, told the tiny tokenizer's pre-tokenizer (see gguf_tiny_converter.py)."""
    from vlft.export.target_gguf import find_llama_cpp

    tree = tmp_path_factory.mktemp("llama_cpp_real")
    real = find_llama_cpp(LLAMA_CPP_DIR).root
    (tree / "convert_hf_to_gguf.py").write_text(TINY_CONVERTER.read_text().replace("REAL_LLAMA_CPP", str(real)))
    return tree


def _trained(base: Path, work: Path, data: dict, *, template: str) -> Path:
    """`vlft train` of the demo's config on ``base`` with the demo's dish images: a checkpoint whose greedy answer
    (an option letter) depends on the image, as a fine-tuned model's does; a random one's are near ties that
    any rounding flips."""
    from vlft.demo import DemoPlan, demo_config
    from vlft.engine.train import train_from_config

    plan = DemoPlan()
    options = [f"model.path={base}", f"data.template={template}",
               f"data.datasets=[{{'path': {str(data['train'])!r}, 'image_root': {str(data['train'].parent)!r}}}]",
               f"model.llm.lora.r={plan.lora_r}", f"model.llm.lora.alpha={2 * plan.lora_r}",
               f"schedule.max_steps={plan.steps}", f"schedule.lr={plan.lr}",
               f"schedule.micro_batch_size={plan.micro_batch_size}", f"schedule.seed={plan.seed}",
               f"engine.save_steps={plan.steps}"]
    return Path(train_from_config(demo_config(), work_dir=str(work), cfg_options=options).checkpoint)


#: The demo's sizes with a 4-layer tower: llama.cpp's converter names the projector's mlp1.N by vision block index.
def _sizes():
    import dataclasses

    from vlft.demo import DemoPlan

    return dataclasses.replace(DemoPlan().sizes, vision_layers=4)


@pytest.fixture(scope="module")
def dish_data(tmp_path_factory):
    from vlft.demo import DemoPlan
    from vlft.demo_data import write_dish_dataset

    plan = DemoPlan()
    return write_dish_dataset(tmp_path_factory.mktemp("dishes"), n_train=plan.n_train, n_test=8,
                              n_dishes=plan.n_dishes, image_size=plan.sizes.tile_size, seed=plan.seed)


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory, dish_data):
    """The demo (its -hf InternVL base on Qwen2, LM head scaled, trained as `vlft demo` trains it)."""
    import dataclasses

    from vlft.demo import DemoPlan, make_demo_base

    root = tmp_path_factory.mktemp("gguf_demo")
    base = make_demo_base(root / "base", dataclasses.replace(DemoPlan(), sizes=_sizes()))
    return _trained(base, root / "train", dish_data, template="internvl2_5")


@pytest.fixture(scope="module")
def internlm2_ckpt(tmp_path_factory, dish_data):
    """An original-layout InternVL-chat base on InternLM2 (InternVL2-2B's layout and template), its tokenizer a
    SentencePiece tokenizer.model with the image tokens added past it as InternVL2 has them, the LM head scaled
    as the demo's, trained as the demo is."""
    from safetensors.torch import load_file, save_file

    from vlft.demo import DemoPlan
    from vlft.tiny.checkpoints import make_tiny_internvl_chat

    root = tmp_path_factory.mktemp("gguf_internlm2")
    base = make_tiny_internvl_chat(root / "base", llm="internlm2", sizes=_sizes(), sentencepiece=True)
    weights = base / "model.safetensors"
    state = load_file(str(weights))
    state["language_model.output.weight"] = state["language_model.output.weight"] * DemoPlan().lm_head_scale
    save_file(state, str(weights), metadata={"format": "pt"})
    return _trained(base, root / "train", dish_data, template="internlm2-chat")


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Eight held-out dishes (two of each, seeds unseen in training) at odd sizes no larger than the tile."""
    import random

    from vlft.demo import DemoPlan
    from vlft.demo_data import DISHES, draw_dish

    plan, root, rng = DemoPlan(), tmp_path_factory.mktemp("odd_images"), random.Random("gguf-held-out")
    paths = []
    for i, (w, h) in enumerate(ODD_SIZES):
        dish = DISHES[i % plan.n_dishes]
        paths.append(root / f"{dish.name}_{w}x{h}.png")
        draw_dish(dish, rng, plan.sizes.tile_size).resize((w, h)).save(paths[-1])
    return paths


def _check_serving(out: Path, images, model: str | None = None) -> tuple[int, int, str]:
    from vlft.demo import DemoPlan
    from vlft.demo_data import DISHES, QUESTIONS, question_text

    prompt = question_text(QUESTIONS[0], [d.name for d in DISHES[:DemoPlan().n_dishes]])
    command = [sys.executable, str(ROOT / "tools" / "check_serving.py"), "--gguf", str(out), "--llama-cpp-python",
               LLAMA_CPP_PYTHON, "--prompt", prompt, "--max-tokens", "8"]
    command += [arg for image in images for arg in ("--image", str(image))]
    command += ["--gguf-model", model] if model else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    verdict = re.search(r"(PASS|FAIL): (\d+) of (\d+)", done.stdout)
    assert verdict, done.stdout + done.stderr
    return int(verdict.group(2)), int(verdict.group(3)), done.stdout


@needs_llama_cpp
@pytest.mark.parametrize("checkpoint", ["demo_ckpt", "internlm2_ckpt"])
@pytest.mark.parametrize("outtype, at_least", [("f16", 8), ("q8_0", 7)])
def test_llama_cpp_answers_like_vlft_chat_from_the_gguf_its_converter_wrote(request, checkpoint, real_converter,
                                                                          odd_images, tmp_path, outtype, at_least):
    out = tmp_path / "gguf"
    result = _convert(request.getfixturevalue(checkpoint), out, "--llama-cpp", str(real_converter),
                      "--outtype", outtype)
    assert result.exit_code == 0, result.output
    equal, total, table = _check_serving(out, odd_images)
    print(f"\n{checkpoint} {outtype}: {equal} of {total}\n{table}")
    assert total == 8 and equal >= at_least, table


@needs_llama_cpp
@pytest.mark.skipif(not shutil.which("llama-quantize"),
                    reason="put llama-quantize on PATH (see tools/bench/README.md) to run --quantize")
def test_quantize_writes_a_q4_k_m_file_llama_cpp_loads(demo_ckpt, real_converter, odd_images, tmp_path):
    out = tmp_path / "gguf"
    result = _convert(demo_ckpt, out, "--llama-cpp", str(real_converter), "--quantize", "q4_k_m")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "vlft_gguf.json").read_text())["quantized"] == ["gguf-q4_k_m.gguf"]
    equal, total, table = _check_serving(out, odd_images, model="gguf-q4_k_m.gguf")
    print(f"\ndemo_ckpt q4_k_m: {equal} of {total}\n{table}")  # a figure, not a goal: 4-bit may differ
    assert total == 8
