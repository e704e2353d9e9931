"""Ask vLLM (offline ``LLM.chat``, greedy) and ``vlft chat`` the same questions about the same images; print a
table and a verdict.

    python tools/check_serving.py MODEL_DIR --image a.png --image b.png --prompt "What is this?" --prompt ...
    python tools/check_serving.py --lora ADAPTER --base BASE --image ... --prompt ...   (`vlft convert --to lora`)

Every image is asked every prompt. vLLM cannot be imported beside vlft's torch, so it runs as a subprocess
with the python of a separate virtual environment (``--vllm-python`` or $VLFT_VLLM_PYTHON; see
tools/bench/README.md for the install recipe); this same file is its script (``--vllm-worker``), importing
nothing but the standard library and vLLM there. On a machine without a GPU vLLM picks its CPU platform
(VLLM_CPU_KVCACHE_SPACE=1). Both sides run in float32, so a difference is a serving difference, not rounding.

    python tools/check_serving.py --gguf OUT --image ... --prompt ...   (`vlft convert --to gguf`)

With --gguf, llama.cpp answers instead (llama-cpp-python's mtmd bindings, from the python of --llama-cpp-python
or $VLFT_LLAMA_CPP_PYTHON): OUT's LLM GGUF and mmproj, the prompt rendered by the chat template in the GGUF's
own metadata, greedy; `vlft chat` answers from the checkpoint the export was made from (--source, default the
one the export recorded in OUT/vlft_gguf.json). The table adds both prompt token counts: llama.cpp tiles InternVL images
by its own rule (vlft.export.target_gguf), so a differing count says the image was tiled differently.

An InternVL-chat folder needs InternVL's remote code for its config. vlft's tiny test checkpoints carry
one-line placeholders instead; for those (only), the check runs on a copy with the config-only stand-ins
of tools/serving_stubs/. Exit status: 0 when every answer is equal, 1 when one differs, 2 when vLLM failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STUBS = Path(__file__).resolve().parent / "serving_stubs"
PLACEHOLDER_MARK = "# Placeholder for"


# ------------------------------------------------------------------------------------------------
# vLLM side (runs under the vLLM venv's python)


def vllm_worker(request_file: str) -> None:
    request = json.loads(Path(request_file).read_text())
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from PIL import Image
    from vllm import LLM, SamplingParams

    kwargs = dict(model=request["model"], trust_remote_code=True, dtype="float32", max_model_len=request["max_len"],
                  gpu_memory_utilization=0.05, enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0,
                  mm_processor_kwargs=request.get("mm_processor_kwargs") or None)
    lora = None
    if request.get("lora"):
        from vllm.lora.request import LoRARequest

        kwargs.update(enable_lora=True, max_lora_rank=request["max_lora_rank"], max_loras=1)
        lora = LoRARequest("adapter", 1, request["lora"])
    llm = LLM(**kwargs)
    conversations = []
    for case in request["cases"]:
        image = Image.open(case["image"]).convert("RGB")
        conversations.append([{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                                           {"type": "text", "text": case["prompt"]}]}])
    template = Path(request["chat_template"]).read_text() if request.get("chat_template") else None
    outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=request["max_tokens"]),
                       chat_template=template, lora_request=lora, use_tqdm=False)
    answers = [{"text": out.outputs[0].text, "token_ids": list(out.outputs[0].token_ids),
                "prompt_tokens": len(out.prompt_token_ids)} for out in outputs]
    Path(request["answers"]).write_text(json.dumps(answers))


# ------------------------------------------------------------------------------------------------
# llama.cpp side (runs under the llama-cpp-python venv's python)


def gguf_worker(request_file: str) -> None:
    request = json.loads(Path(request_file).read_text())
    import ctypes

    import jinja2
    import jinja2.ext
    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    class Generation(jinja2.ext.Extension):
        """transformers' {% generation %} marks what is trained; rendering ignores it (as llama.cpp's jinja does)."""

        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    llm = llama_cpp.Llama(model_path=request["model"], n_ctx=request["max_len"], n_batch=request["max_len"],
                          n_threads=2, logits_all=True, verbose=False, seed=0)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.print_timings, params.n_threads = False, False, 2
    vision = mtmd.mtmd_init_from_file(request["mmproj"].encode(), llm.model, params)
    if vision is None:
        raise SystemExit(f"llama.cpp could not load {request['mmproj']}")
    marker = mtmd.mtmd_default_marker().decode()
    template = jinja2.Environment(extensions=[Generation]).from_string(llm.metadata["tokenizer.chat_template"])
    stops = {llm.token_eos(), *request["stop_ids"]}
    answers = []
    for case in request["cases"]:
        text = template.render(messages=[{"role": "user", "content": f"{marker}\n{case['prompt']}"}],
                               add_generation_prompt=True)
        chunks = mtmd.mtmd_input_chunks_init()
        bitmap = mtmd.mtmd_helper_bitmap_init_from_file(vision, case["image"].encode(), False)
        prompt = mtmd.mtmd_input_text()
        prompt.text, prompt.text_len, prompt.add_special, prompt.parse_special = text.encode(), len(text.encode()), True, True
        if mtmd.mtmd_tokenize(vision, chunks, ctypes.byref(prompt), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0:
            raise SystemExit(f"llama.cpp could not tokenize the prompt for {case['image']}")
        llm.reset()
        llm._ctx.kv_cache_clear()
        prompt_tokens = mtmd.mtmd_helper_get_n_tokens(chunks)
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                llm.eval([tokens[j] for j in range(count.value)])
            else:
                n_past = llama_cpp.llama_pos(0)
                if mtmd.mtmd_helper_eval_chunk_single(vision, llm._ctx.ctx, chunk, llama_cpp.llama_pos(llm.n_tokens),
                                                      llama_cpp.llama_seq_id(0), llm.n_batch, False,
                                                      ctypes.byref(n_past)) != 0:
                    raise SystemExit(f"llama.cpp could not encode {case['image']}")
                llm.n_tokens = n_past.value
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        generated = []
        for _ in range(request["max_tokens"]):
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            if token in stops:
                break
            generated.append(token)
            llm.eval([token])
        answers.append({"text": llm.detokenize(generated).decode("utf-8", errors="replace"), "token_ids": generated,
                        "prompt_tokens": int(prompt_tokens)})
    mtmd.mtmd_free(vision)
    Path(request["answers"]).write_text(json.dumps(answers))


def run_gguf(python: str, out: Path, cases: list[dict], *, model: str | None, max_tokens: int, stop_ids: list[int],
             scratch: Path, timeout: int) -> list[dict]:
    """llama.cpp's answers from OUT's LLM GGUF (``model``, a file name in OUT; default the one the export
    recorded, else the only one) and its mmproj."""
    mmproj = sorted(out.glob("mmproj-*.gguf"))
    models = sorted(p.name for p in out.glob("*.gguf") if not p.name.startswith("mmproj-"))
    record = out / "vlft_gguf.json"
    chosen = model or (json.loads(record.read_text())["llm"] if record.is_file() else models[0] if models else None)
    if not mmproj or chosen not in models:
        raise RuntimeError(f"{out}: no {chosen or '<name>-<type>.gguf'} and mmproj-*.gguf pair (give a "
                           "`vlft convert --to gguf` OUT, and --gguf-model one of its GGUF files)")
    return run_llama_cpp(python, {"model": str(out / chosen), "mmproj": str(mmproj[0]), "stop_ids": stop_ids}, cases,
                         max_tokens=max_tokens, scratch=scratch, timeout=timeout)


def run_llama_cpp(python: str, request: dict, cases: list[dict], *, max_tokens: int, scratch: Path,
                  timeout: int) -> list[dict]:
    request = {**request, "cases": cases, "max_tokens": max_tokens, "max_len": 4096}
    return run_worker(python, "llama.cpp", "--gguf-worker", request, scratch=scratch,
                      env={**os.environ, "PYTHONPATH": ""}, timeout=timeout)


def run_worker(python: str, server: str, flag: str, request: dict, *, scratch: Path, env: dict,
               timeout: int) -> list[dict]:
    """Run this file as `flag` under the server's python on `request`; the answers it wrote. Its log is kept in
    the temp folder (the scratch folder goes); a failure raises with the log's error lines."""
    request = {**request, "answers": str(scratch / "answers.json")}
    (scratch / "request.json").write_text(json.dumps(request))
    name = server.replace(".", "_").lower()
    log = scratch / f"{name}.log"
    with open(log, "w") as out:
        done = subprocess.run([python, __file__, flag, str(scratch / "request.json")], stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=scratch)
    kept = Path(tempfile.gettempdir()) / f"check_serving_{name}.log"
    shutil.copy2(log, kept)
    if done.returncode != 0:
        lines = log.read_text().strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line][-5:]
        raise RuntimeError(f"{server} failed (whole log: {kept}):\n" + "\n".join(errors or lines[-15:]))
    return json.loads((scratch / "answers.json").read_text())


# ------------------------------------------------------------------------------------------------
# vlft side


def vlft_answers(model, cases: list[dict], max_tokens: int, *, prompt_counts: list | None = None) -> list[str]:
    """What `vlft chat MODEL --image I --prompt P --max-new-tokens N` answers, case by case (greedy, float32);
    ``model`` is a folder, or what load_for_inference returned for it. Each prompt's token count is appended to
    ``prompt_counts`` when given."""
    from vlft.infer._generate import GenerationSettings, prompt_ids
    from vlft.infer.chat import ChatSession
    from vlft.infer.loading import load_for_inference

    model_, pipeline = load_for_inference(model, device="cpu") if isinstance(model, (str, Path)) else model
    answers = []
    for case in cases:
        session = ChatSession(model_, pipeline, GenerationSettings(max_new_tokens=max_tokens))
        if prompt_counts is not None:
            prompt_counts.append(len(prompt_ids(pipeline, session.sample(case["prompt"], case["image"]))))
        answers.append(session.ask(case["prompt"], case["image"]))
    return answers


def _needs_stub_code(folder: Path) -> bool:
    code = folder / "configuration_internvl_chat.py"
    return code.is_file() and code.read_text().startswith(PLACEHOLDER_MARK)


def servable_copy(folder: Path, scratch: Path) -> Path:
    """``folder`` itself, or (tiny test checkpoints only) a linked copy with the config-only stand-ins."""
    if not _needs_stub_code(folder):
        return folder
    copy = scratch / folder.name
    copy.mkdir()
    for item in folder.iterdir():
        (copy / item.name).symlink_to(item.resolve())
    for stub in STUBS.glob("*.py"):
        (copy / stub.name).unlink(missing_ok=True)
        shutil.copy2(stub, copy / stub.name)
    return copy


def run_vllm(python: str, model: Path, cases: list[dict], *, max_tokens: int, lora: Path | None,
             scratch: Path, timeout: int) -> list[dict]:
    request = {"model": str(model), "cases": cases, "max_tokens": max_tokens, "max_len": 4096}
    if lora is not None:
        config = json.loads((lora / "adapter_config.json").read_text())
        request.update(lora=str(lora), max_lora_rank=next(s for s in (8, 16, 32, 64, 128, 256, 512) if s >= config["r"]))
        record = json.loads((lora / "vlft_lora.json").read_text())
        request["mm_processor_kwargs"] = record.get("mm_processor_kwargs") or {}
        if (lora / "chat_template.jinja").is_file():
            request["chat_template"] = str(lora / "chat_template.jinja")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    return run_worker(python, "vLLM", "--vllm-worker", request, scratch=scratch, env=env, timeout=timeout)


def table(cases: list[dict], ours: list[str], theirs: list[dict], *, server: str = "vLLM",
          our_prompt_tokens: list[int] | None = None) -> tuple[str, int]:
    """The markdown table and how many answers are equal (and, with prompt token counts, equally long prompts)."""
    counts = our_prompt_tokens is not None
    rows = [f"| # | image | prompt | vlft chat | {server} | {'prompt tokens (vlft / ' + server + ') | ' if counts else ''}"
            "equal |", "|---|---|---|---|---|" + ("---|" if counts else "") + "---|"]
    equal = 0
    for i, (case, a, b) in enumerate(zip(cases, ours, theirs), start=1):
        same = a.strip() == b["text"].strip() and (not counts or our_prompt_tokens[i - 1] == b["prompt_tokens"])
        equal += same
        tokens = f"{our_prompt_tokens[i - 1]} / {b['prompt_tokens']} | " if counts else ""
        rows.append(f"| {i} | {Path(case['image']).name} | {_cell(case['prompt'], 60)} | {_cell(a)} | {_cell(b['text'])} | "
                    f"{tokens}{'yes' if same else '**no**'} |")
    return "\n".join(rows), equal


def _cell(text: str, width: int = 40) -> str:
    text = text.strip().replace("\n", "⏎").replace("|", "\\|")
    return repr(text if len(text) <= width else text[:width] + "…")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a converted folder (--to hf or --to internvl-chat)")
    parser.add_argument("--image", action="append", default=[], required=True)
    parser.add_argument("--prompt", action="append", default=[], required=True)
    parser.add_argument("--lora", help="an adapter from `vlft convert --to lora`; needs --base")
    parser.add_argument("--base", help="the base model folder the adapter applies to")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--vllm-python", default=os.environ.get("VLFT_VLLM_PYTHON"))
    parser.add_argument("--gguf", help="a `vlft convert --to gguf` OUT: ask llama.cpp instead of vLLM")
    parser.add_argument("--gguf-model", help="with --gguf: which LLM file of OUT (default the unquantized one)")
    parser.add_argument("--source", help="with --gguf: the checkpoint `vlft chat` answers from (default: the one "
                                         "the export recorded in OUT/vlft_gguf.json)")
    parser.add_argument("--llama-cpp-python", default=os.environ.get("VLFT_LLAMA_CPP_PYTHON"))
    parser.add_argument("--timeout", type=int, default=1200, help="seconds for the vLLM / llama.cpp run")
    args = parser.parse_args(argv)
    if args.gguf:
        return main_gguf(parser, args)
    if not args.vllm_python or not Path(args.vllm_python).exists():
        parser.error("no vLLM python: pass --vllm-python or set VLFT_VLLM_PYTHON (see tools/bench/README.md)")
    if args.lora and not args.base or (args.model is None) == (args.lora is None):
        parser.error("give MODEL_DIR, or --lora ADAPTER --base BASE")
    cases = [{"image": str(Path(image).resolve()), "prompt": prompt} for image in args.image for prompt in args.prompt]

    with tempfile.TemporaryDirectory(prefix="check_serving_") as tmp:
        scratch = Path(tmp)
        if args.lora:
            lora = Path(args.lora).resolve()
            served = servable_copy(Path(args.base).resolve(), scratch)
            ours_model = json.loads((lora / "vlft_lora.json").read_text())["source"]  # the training checkpoint
        else:
            lora, served, ours_model = None, servable_copy(Path(args.model).resolve(), scratch), args.model
        try:
            theirs = run_vllm(args.vllm_python, served, cases, max_tokens=args.max_tokens, lora=lora,
                              scratch=scratch, timeout=args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}")
            return 2
    ours = vlft_answers(ours_model, cases, args.max_tokens)
    text, equal = table(cases, ours, theirs)
    print(text)
    verdict = "PASS" if equal == len(cases) else "FAIL"
    print(f"\n{verdict}: {equal} of {len(cases)} greedy answers of vLLM equal `vlft chat`"
          + (f" (adapter {args.lora} on {args.base})" if args.lora else f" ({args.model})"))
    return 0 if equal == len(cases) else 1


def main_gguf(parser, args) -> int:
    if not args.llama_cpp_python or not Path(args.llama_cpp_python).exists():
        parser.error("no llama-cpp-python: pass --llama-cpp-python or set VLFT_LLAMA_CPP_PYTHON "
                     "(see tools/bench/README.md)")
    out = Path(args.gguf).resolve()
    source = args.source or json.loads((out / "vlft_gguf.json").read_text())["source"]
    cases = [{"image": str(Path(image).resolve()), "prompt": prompt} for image in args.image for prompt in args.prompt]
    from vlft.infer._generate import stop_token_ids
    from vlft.infer.loading import load_for_inference

    loaded = load_for_inference(source, device="cpu")  # once: its stop ids for llama.cpp, then its answers
    with tempfile.TemporaryDirectory(prefix="check_serving_") as tmp:
        try:
            theirs = run_gguf(args.llama_cpp_python, out, cases, model=args.gguf_model, max_tokens=args.max_tokens,
                              stop_ids=stop_token_ids(loaded[1]), scratch=Path(tmp), timeout=args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}")
            return 2
    counts: list[int] = []
    ours = vlft_answers(loaded, cases, args.max_tokens, prompt_counts=counts)
    text, equal = table(cases, ours, theirs, server="llama.cpp", our_prompt_tokens=counts)
    print(text)
    verdict = "PASS" if equal == len(cases) else "FAIL"
    print(f"\n{verdict}: {equal} of {len(cases)} greedy answers of llama.cpp ({out}) equal `vlft chat` ({source}), "
          "prompt token counts included")
    return 0 if equal == len(cases) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--vllm-worker":
        vllm_worker(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--gguf-worker":
        gguf_worker(sys.argv[2])
    else:
        sys.exit(main())
