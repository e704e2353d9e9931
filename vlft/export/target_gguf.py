"""`--to gguf`: the language model and the vision tower + connector ("mmproj") as GGUF files for llama.cpp and
Ollama, written by llama.cpp's own converter (``convert_hf_to_gguf.py``, and ``--mmproj``) run as a subprocess on
the folder layout it reads for the family, plus an Ollama ``Modelfile``. vlft writes no GGUF tensor itself.

    OUT/<name>-<outtype>.gguf          the LLM (chat template and stop token in its metadata)
    OUT/mmproj-<name>-f16.gguf         vision tower + connector (image size, mean/std, tiles, projector type)
    OUT/<name>-<quant>.gguf            one per --quantize, by llama-quantize
    OUT/Modelfile                      FROM both files, the training template as TEMPLATE, PARAMETER stop
    OUT/vlft_gguf.json                 the source checkpoint, the files, the tiling line

Where the converter comes from: ``--llama-cpp DIR`` or $LLAMA_CPP_DIR, a llama.cpp checkout or an unpacked
llama-cpp-python source distribution (which vendors llama.cpp under vendor/llama.cpp). The converter runs with
this python; the checkout's own gguf-py is on its path, so the `gguf` package need not be installed.

What llama.cpp reads is fixed by its converter: for InternVL, the original InternVL-chat layout
(``InternVLChatModel``: ``llm_config`` + ``vision_config`` with ``InternVisionModel``; the -hf layout it does
not read), its config's ``downsample_ratio``, ``min/max_dynamic_patch``, and preprocessor_config.json's
``image_mean`` / ``image_std``. The projector always takes the vision tower's last layer and the v2 pixel
shuffle; a run that differs is refused before anything is written, as is a tower of fewer than 4 layers (the
converter names the projector's mlp1.N by vision block index). Of the tokenizer it reads tokenizer.json, or for
InternLM2 only a SentencePiece tokenizer.model, which vlft takes from the checkpoint or its base and pads to the
LLM's vocab_size (write_converter_tokenizer); add_bos/add_eos are written off, since every vlft template writes
its own specials.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vlft.errors import CheckpointError, ConfigError
from vlft.export.hf_files import export_template, training_tiling
from vlft.export.merge import MergedModel, StreamedMerge
from vlft.export.target_interface import ExportTarget, Written
from vlft.export.target_internvl_chat import check_internvl_chat_source, write_internvl_chat
from vlft.export.writers import ShardReport
from vlft.families import family_named, normalisation_of

OUTTYPES = ("f16", "bf16", "q8_0")
#: llama-quantize's type names (what --quantize takes); the GGUF file is named with the lower-case form.
QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
               "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")
CONVERTER = "convert_hf_to_gguf.py"
MODELFILE = "Modelfile"
#: What the export was made from (tools/check_serving.py --gguf asks `vlft chat` that checkpoint).
GGUF_RECORD = "vlft_gguf.json"
#: The folder the converter reads, inside the staging directory; removed once the GGUF files are written.
CONVERTER_INPUT = ".converter-input"
#: The layout each family's folder is written in for llama.cpp's converter (vlft.export target names).
CONVERTER_LAYOUTS = {"internvl-chat": write_internvl_chat}
HOW_TO_GET_LLAMA_CPP = ("pass --llama-cpp DIR or set LLAMA_CPP_DIR to a llama.cpp checkout, or to a llama-cpp-python "
                        "source distribution unpacked with `pip download --no-binary :all: --no-deps llama-cpp-python` "
                        "and `tar xzf` (see tools/bench/README.md)")


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp source tree: its converter, and llama-quantize when it was built (or is on PATH)."""

    root: Path

    @property
    def converter(self) -> Path:
        return self.root / CONVERTER

    def quantize_tool(self) -> Path | None:
        for candidate in (self.root / "build" / "bin" / "llama-quantize", self.root / "llama-quantize"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        found = shutil.which("llama-quantize")
        return Path(found) if found else None


def find_llama_cpp(given: str | Path | None) -> LlamaCpp:
    """The llama.cpp tree of --llama-cpp, else $LLAMA_CPP_DIR; one line saying how to get one when none."""
    where = given or os.environ.get("LLAMA_CPP_DIR")
    if not where:
        raise ConfigError(f"--to gguf needs llama.cpp's {CONVERTER}: {HOW_TO_GET_LLAMA_CPP}")
    root = Path(where)
    for candidate in (root, root / "vendor" / "llama.cpp"):  # a checkout, or an unpacked llama-cpp-python sdist
        if (candidate / CONVERTER).is_file():
            return LlamaCpp(candidate)
    raise ConfigError(f"{root}: no {CONVERTER} there (nor in {root / 'vendor' / 'llama.cpp'}); {HOW_TO_GET_LLAMA_CPP}")


# ------------------------------------------------------------------------------------------------
# Checks: what llama.cpp's projector computes must be what the run trained


def check_gguf_source(peek: dict, source: Path) -> None:
    family = family_named(peek["family"])
    if family.gguf_layout is None:  # check_target refuses it first; kept for a direct caller
        why = family.export_refusal("gguf") or f"{family.display_name} has no GGUF layout"
        raise CheckpointError(f"--to gguf: {why}")
    if family.gguf_layout == "internvl-chat":
        check_internvl_chat_source(peek, source)
    if peek.get("ps_version", "v2") != "v2":
        raise CheckpointError(f"--to gguf: the base uses ps_version={peek['ps_version']!r}; llama.cpp's InternVL "
                              "projector implements only the 'v2' pixel shuffle")


def check_image_settings(merged) -> list[str]:
    """Refuse what llama.cpp's projector cannot compute; the warnings for what its preprocessing does differently."""
    info = merged.info
    if info.select_layer != -1:
        raise CheckpointError(f"--to gguf: the connector reads vision layer {info.select_layer}; llama.cpp's InternVL "
                              "projector reads only the last layer (-1)")
    if 1.0 / info.downsample_ratio != int(1.0 / info.downsample_ratio):
        raise CheckpointError(f"--to gguf: downsample_ratio {info.downsample_ratio} is not 1/n; llama.cpp's pixel "
                              "shuffle takes an integer scale factor")
    return [tiling_warning(training_tiling(merged.spec, info))]


def tiling_warning(tiling) -> str:
    """One line: where llama.cpp's InternVL preprocessing tiles as training did, and where it does not."""
    size = tiling.tile_size
    if tiling.mode == "resize":
        return (f"training gave every image one {size}px tile; llama.cpp does so only for images no larger than "
                f"{size}x{size} px, and splits a larger one into tiles plus an overview (more image tokens)")
    thumb = "" if tiling.use_thumbnail else "; training used no thumbnail, llama.cpp always adds the overview"
    return (f"llama.cpp tiles as training did (one tile) only for images no larger than {size}x{size} px; a larger "
            f"image it splits into up to {tiling.max_tiles} tiles by best resolution (LLaVA-NeXT's rule), not "
            f"InternVL's closest aspect ratio, so its tile count can differ{thumb}")


# ------------------------------------------------------------------------------------------------
# Writing


def write_gguf(staging: Path, merged: MergedModel | StreamedMerge, *, dtype: str, max_shard_size,
               outtype: str = "f16", quantize: tuple[str, ...] = (), llama_cpp: str | Path | None = None) -> Written:
    """Write the converter's folder, run the converter twice (LLM, mmproj), quantize, write the Modelfile."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    unknown = [q for q in quantize if q.lower() not in QUANT_TYPES]
    if unknown:
        raise ConfigError(f"--quantize {unknown[0]!r} is not one of {', '.join(QUANT_TYPES)}")
    tree = find_llama_cpp(llama_cpp)
    quantizer = tree.quantize_tool() if quantize else None
    if quantize and quantizer is None:
        raise ConfigError(f"--quantize needs llama-quantize: build it in {tree.root} "
                          "(`cmake -B build && cmake --build build --target llama-quantize`) or put it on PATH")
    family = family_named(merged.family)
    warnings = check_image_settings(merged)

    name = staging.name.partition(".tmp-")[0]
    folder = staging / CONVERTER_INPUT
    folder.mkdir()
    # fp32 in: the converter rounds once, to the GGUF type (bf16 in would round f16 output twice).
    written = CONVERTER_LAYOUTS[family.gguf_layout](folder, merged, dtype="bf16" if outtype == "bf16" else "fp32",
                                                    max_shard_size=max_shard_size)
    warnings += [w for w in written.warnings if "remote code" not in w]  # the converter reads no remote code
    mean, std = normalisation_of(merged.info)
    tile = training_tiling(merged.spec, merged.info).tile_size
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": list(mean), "image_std": list(std), "size": {"height": tile, "width": tile}}, indent=2) + "\n")

    check_converter_folder(folder)
    write_converter_tokenizer(folder, merged)

    llm_file = staging / f"{name}-{outtype}.gguf"
    mmproj_file = staging / f"mmproj-{name}-f16.gguf"
    run_converter(tree, folder, llm_file, outtype=outtype)
    run_converter(tree, folder, mmproj_file, outtype="f16", mmproj=True)
    shutil.rmtree(folder)
    files = [llm_file, mmproj_file]
    for quant in quantize:
        target = staging / f"{name}-{quant.lower()}.gguf"
        run_tool([str(quantizer), str(llm_file), str(target), quant.upper()], what="llama-quantize")
        files.append(target)

    template = export_template(merged.spec, merged.family, layout=family.gguf_layout)
    (staging / MODELFILE).write_text(modelfile(llm_file.name, mmproj_file.name, template))
    (staging / GGUF_RECORD).write_text(json.dumps(
        {"source": str(merged.provenance.get("source", "")), "llm": llm_file.name, "mmproj": mmproj_file.name,
         "quantized": [f.name for f in files[2:]], "template": template.name, "tiling_warning": warnings[0]},
        indent=2, ensure_ascii=False) + "\n")
    sizes = {f.name: f.stat().st_size for f in files}
    report = ShardReport(weight_map={}, shard_bytes=sizes, total_bytes=sum(sizes.values()),
                         total_parameters=written.report.total_parameters)
    return Written(report, warnings)


def check_converter_folder(folder: Path) -> None:
    """Refuse what the converter would stop on half-way: its tensor map names the projector's mlp1.0 / .1 / .3
    as vision blocks (``mlp1.{bid}``), so a tower of fewer than 4 layers has no name for mlp1.3."""
    vision = json.loads((folder / "config.json").read_text()).get("vision_config", {})
    layers = vision.get("num_hidden_layers", 4)
    if layers < 4:
        raise CheckpointError(f"--to gguf: the vision tower has {layers} layer(s); llama.cpp's converter names the "
                              "projector's mlp1.3 by vision block index, so it needs a tower of at least 4 layers")


def write_converter_tokenizer(folder: Path, merged) -> None:
    """What the converter reads of the tokenizer beyond the layout's files.

    - add_bos_token / add_eos_token false: every vlft template writes its own specials (internlm2-chat its
      "<s>") and vlft tokenizes with none added, so llama.cpp must add none either.
    - a SentencePiece tokenizer.model, where the checkpoint or its base has one (llama.cpp's InternLM2
      converter reads only that; transformers' save writes only tokenizer.json), with a piece for every id past
      its own up to the LLM's vocab_size: InternVL2 adds <img> ... after InternLM2's vocabulary, and the
      converter asks SentencePiece for every id below vocab_size. Added tokens keep their text (the converter
      marks them as the tokenizer says), the ids no token uses are [UNUSED_TOKEN_<id>].
    """
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(add_bos_token=False, add_eos_token=False)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    sources = [Path(p) for p in (merged.provenance.get("source"), merged.provenance.get("base_model")) if p]
    model_file = next((p / "tokenizer.model" for p in sources if (p / "tokenizer.model").is_file()), None)
    if model_file is None:
        return
    chat_config = json.loads((folder / "config.json").read_text())
    vocab_size = chat_config.get("llm_config", chat_config.get("text_config", chat_config))["vocab_size"]
    (folder / "tokenizer.model").write_bytes(padded_sentencepiece(model_file.read_bytes(), vocab_size,
                                                                  merged.tokenizer.get_vocab()))


def padded_sentencepiece(model: bytes, vocab_size: int, vocab: dict[str, int]) -> bytes:
    """The SentencePiece model with a piece for each id from its own size up to ``vocab_size``: the
    tokenizer's token of that id (user-defined), else an unused [UNUSED_TOKEN_<id>]."""
    from sentencepiece import sentencepiece_model_pb2  # optional: only a SentencePiece tokenizer needs it

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    kind = sentencepiece_model_pb2.ModelProto.SentencePiece.Type
    by_id = {i: token for token, i in vocab.items()}
    for i in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece, piece.score = by_id.get(i, f"[UNUSED_TOKEN_{i}]"), 0.0
        piece.type = kind.USER_DEFINED if i in by_id else kind.UNUSED
    return proto.SerializeToString()


def run_converter(tree: LlamaCpp, folder: Path, out_file: Path, *, outtype: str, mmproj: bool = False) -> None:
    command = [sys.executable, str(tree.converter), str(folder), "--outfile", str(out_file), "--outtype", outtype]
    if mmproj:
        command.append("--mmproj")
    run_tool(command, what=f"{tree.converter}{' --mmproj' if mmproj else ''}")
    if mmproj and not out_file.is_file():  # the converter prefixes "mmproj-" when it names the file itself
        raise CheckpointError(f"{tree.converter} --mmproj wrote no {out_file.name}; this converter cannot write the "
                              "vision part of this layout (update llama.cpp)")


def run_tool(command: list[str], *, what: str) -> None:
    """Run a llama.cpp tool; its one telling line (the last error) when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise CheckpointError(f"{what} failed: {converter_error(done.stderr + done.stdout)}")


def converter_error(log: str) -> str:
    """The line of a converter's log that says why it stopped (an exception, else its last error line)."""
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":")[0] or line.startswith(("ERROR", "error")):
            return line
    return lines[-1] if lines else "no output"


# ------------------------------------------------------------------------------------------------
# Ollama's Modelfile


def modelfile(llm: str, mmproj: str, template) -> str:
    """FROM the two GGUF files, the training template in Go-template form, its stop strings."""
    stops = [template.end_of_turn.strip()] + [s for s in template.stop_words if s != template.end_of_turn.strip()]
    lines = [f"FROM ./{llm}", f"FROM ./{mmproj}", f'TEMPLATE """{go_template(template)}"""']
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in dict.fromkeys(s for s in stops if s)]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def go_template(t) -> str:
    """The ChatTemplate as an Ollama (Go text/template) TEMPLATE: the same text as its Jinja, from .System and
    .Messages, ending with the generation prompt."""
    for piece in (t.bos, t.system, t.default_system, t.user, t.assistant_header, t.reply_prefix, t.end_of_turn,
                  t.separator):
        if "{{" in piece or '"""' in piece:
            raise CheckpointError(f"template {t.name!r}: a piece holds '{{{{' or '\"\"\"', which a Modelfile "
                                  "TEMPLATE cannot hold literally")
    parts = [t.bos]
    if t.system:
        default = t.wrap_system(t.default_system) if t.default_system else ""
        parts.append(f"{{{{ if .System }}}}{t.wrap_system('{{ .System }}')}{{{{ else }}}}{default}{{{{ end }}}}")
    parts.append("{{ range .Messages }}")
    parts.append(f'{{{{ if eq .Role "user" }}}}{t.wrap_user("{{ .Content }}")}')
    parts.append(f'{{{{ else if eq .Role "assistant" }}}}{t.assistant_header}{t.reply_prefix}{{{{ .Content }}}}'
                 f"{t.end_of_turn}{t.separator}{{{{ end }}}}")
    parts.append("{{ end }}")
    parts.append(t.assistant_header)
    return "".join(parts)


VERIFY_ELSEWHERE = ("--verify: a GGUF export is checked by llama.cpp itself: "
                    "`python tools/check_serving.py --gguf OUT ...` (see tools/bench/README.md)")


def verify_gguf(staging: Path, merged, *, dtype):
    raise ConfigError(VERIFY_ELSEWHERE)


def resolve_verify_gguf(family, verify: bool | None) -> bool:
    if verify:
        raise ConfigError(VERIFY_ELSEWHERE)
    return False


GGUF = ExportTarget(name="gguf", title="GGUF", help="GGUF + mmproj for llama.cpp and Ollama, by llama.cpp's converter",
                    write=write_gguf, verify=verify_gguf, resolve_verify=resolve_verify_gguf,
                    check_source=check_gguf_source)
