"""Shared fixtures: offline hub, tiny checkpoints written once per session."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# encoded-dataset caches go to a fresh folder per test session, never to ~/.cache
os.environ.setdefault("VLFT_CACHE_DIR", tempfile.mkdtemp(prefix="vlft-test-cache-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Tiny checkpoints of every input layout, made once: {name: path}."""
    from vlft.tiny.checkpoints import (make_tiny_internvl_chat, make_tiny_internvl_hf, make_tiny_llava_hf,
                                       make_tiny_parts)

    root = tmp_path_factory.mktemp("tiny")
    paths = {
        "internvl_hf": make_tiny_internvl_hf(root / "internvl_hf"),
        "internvl_hf_llama": make_tiny_internvl_hf(root / "internvl_hf_llama", llm="llama"),
        "llava_hf": make_tiny_llava_hf(root / "llava_hf"),
        "internvl_chat_internlm2": make_tiny_internvl_chat(root / "internvl_chat_internlm2", llm="internlm2"),
        "internvl_chat_qwen2": make_tiny_internvl_chat(root / "internvl_chat_qwen2", llm="qwen2"),
    }
    paths["internvl_vision"], paths["internvl_llm"] = make_tiny_parts(root / "internvl_parts", family="internvl")
    paths["llava_vision"], paths["llava_llm"] = make_tiny_parts(root / "llava_parts", family="llava")
    return paths


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and `pytest -n 2` already keeps both cores busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    """mmengine imports yapf, whose first import in a fresh environment writes its grammar pickle; two xdist
    workers doing that at once can read a half-written file (EOFError at collection). The controller runs
    this before it starts the workers, so the file exists by then."""
    try:
        import yapf  # noqa: F401
    except ImportError:  # an mmengine without yapf: nothing to warm
        pass


def pytest_collection_modifyitems(items):
    """Battery cases carry their category on every report, so tools/battery.py can tally them under xdist."""
    for item in items:
        for mark in item.iter_markers("battery"):
            item.user_properties.append(("battery", (mark.args[0], mark.kwargs.get("was", "traceback"))))
