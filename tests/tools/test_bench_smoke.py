"""The benchmarks under tools/bench still run (tiny sizes, CPU), so they do not rot between measurements.

They run as child processes because they set process-wide state (torch threads, DeepSpeed's environment).
No figure is asserted: timings belong to the benchmarks, never to tests.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_gpu_script_runs_tiny_on_cpu():
    output = _run("gpu_lora.py", "--tiny", "--steps", "2", "--warmup-steps", "1")
    assert "gpu_lora: tiny (CPU smoke test) on CPU" in output
    for line in ("tokens/s", "model TFLOP/s", "MFU", "peak GPU memory"):
        assert line in output, line


def test_preprocess_bench_compares_pixels_on_a_few_images():
    output = _run("bench_preprocess.py", "--images", "3", "--max-tiles", "4", "--tile", "112")
    assert "grids equal, pixels bit-identical" in output
    assert "ratio" in output


def test_merge_memory_bench_runs_at_toy_sizes():
    output = _run("bench_merge_memory.py", "--tiny")
    assert "tiny shapes (smoke test, no figures)" in output
    for contender in ("vlft merge (bf16)", "vlft convert --to hf (1GB shards)", "peer: transformers + peft"):
        assert contender in output, contender


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"),
                    reason="set LLAMA_CPP_DIR (llama.cpp's source, see tools/bench/README.md) to run llama.cpp's converter")
def test_gguf_bench_runs_at_toy_sizes():
    output = _run("bench_gguf.py", "--tiny")
    assert "tiny shapes (smoke test, no figures)" in output
    for line in ("converter's own (no model)", "vlft convert --to gguf", "budget 1.5 x largest shard"):
        assert line in output, line


def test_train_bench_runs_on_a_handful_of_samples():
    output = _run("bench_train.py", "--samples", "8", "--micro-batch", "2", "--accumulation", "1", "--pack-rows", "1")
    for contender in ("transformers Trainer + peft, padding", "vlft, padding", "vlft, packing"):
        assert contender in output, contender


def test_data_bench_runs_tiny():
    output = _run("bench_data.py", "--tiny")
    assert "1 of 2 ranks encoded (built once)" in output
    for contender in ("in-process (old)", "cache cold, 2 procs", "cache warm"):
        assert contender in output, contender


def test_checkpointing_bench_runs_and_the_three_kinds_agree():
    output = _run("bench_checkpointing.py", "--tokens", "64")  # exits 1 when loss or gradients differ
    for kind in ("| none |", "| non-reentrant |", "| reentrant | "):
        assert kind in output, kind


def test_peers_bench_marks_each_peer_in_one_line_when_their_venvs_are_absent():
    env_before = os.environ.pop("VLFT_PEERS_VENVS", None)
    try:
        output = _run("bench_peers.py", "--tiny", "--models", "llava", "--packing", "off")
    finally:
        if env_before is not None:
            os.environ["VLFT_PEERS_VENVS"] = env_before
    assert "| vlft, padding |" in output
    for peer in ("LLaMA-Factory", "ms-swift"):
        assert f"- {peer} (padding) cannot train llava here: peers' venvs not given" in output, peer
        assert f"| {peer}, padding | cannot train here (below) |" in output, peer


PEERS_VENVS = os.environ.get("VLFT_PEERS_VENVS")


@pytest.mark.skipif(not PEERS_VENVS or not all((Path(PEERS_VENVS) / tool / "bin" / "python").exists()
                                               for tool in ("llamafactory", "swift")),
                    reason="opt-in: VLFT_PEERS_VENVS names a folder with the llamafactory/ and swift/ venvs "
                           "(recipe in tools/bench/README.md); CI never installs them")
def test_peers_bench_trains_llamafactory_and_swift_beside_vlft_at_toy_sizes():
    output = _run("bench_peers.py", "--tiny", "--models", "llava", "--packing", "off", "--venvs", PEERS_VENVS)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in output.splitlines() if line.startswith("| ")}
    for contender in ("vlft, padding", "LLaMA-Factory, padding", "ms-swift, padding"):
        assert contender in rows, contender
        assert "cannot train here" not in rows[contender], output[-3000:]
    trainable = {rows[c].split(" | ")[6] for c in ("vlft, padding", "LLaMA-Factory, padding", "ms-swift, padding")}
    assert len(trainable) == 1, trainable  # the same LoRA and connector: the same trainable count


def test_dpo_bench_runs_at_toy_sizes():
    output = _run("bench_dpo.py", "--tiny", "--model", "llava")
    assert "tiny shapes (smoke test, no figures)" in output
    for side in ("sft (2 rows per micro batch)", "dpo, reference = adapters off", "dpo, reference precomputed",
                 "trl DPOTrainer + peft"):
        assert side in output, side
