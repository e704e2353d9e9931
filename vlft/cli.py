"""The `vlft` command: a thin click shell; each subcommand imports its layer only when it runs."""
from __future__ import annotations

import functools
import os
import shlex
import sys

import click

TEMPLATE_HELP = ("Chat template name (internvl2_5, internlm2-chat, chatml, vicuna_v1, llama3, plain) to use instead "
                 "of the model's own; a directory without vlft metadata otherwise gets its family's default.")


def user_errors(fn):
    """Turn vlft's own errors into one line on stderr and exit code 2 (tracebacks are for bugs)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not _is_user_error(exc):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _is_user_error(exc: BaseException) -> bool:
    from vlft.errors import VlftError

    return isinstance(exc, VlftError) or (
        isinstance(exc, (ValueError, KeyError, OSError)) and type(exc).__module__.startswith("vlft"))


CFG_OPTIONS_HELP = ("Override config keys or Settings values: --cfg-options schedule.lr=1e-4 data_path=other.json "
                    "lora_r=64 (several KEY=VALUE words after one flag, as in XTuner). A Settings name re-evaluates "
                    "the config, so values derived from it follow; model.llm.lora.r=N without lora.alpha scales "
                    "alpha with it.")


def _cfg_options(flagged: tuple[str, ...], trailing: tuple[str, ...]) -> tuple[str, ...]:
    """click gives the first word after --cfg-options to the option and the rest as extra arguments."""
    stray = [word for word in trailing if "=" not in word]
    if stray:
        raise click.UsageError(f"unexpected argument {stray[0]!r}; overrides are KEY=VALUE after --cfg-options")
    if trailing and not flagged:
        raise click.UsageError(f"{trailing[0]!r}: put overrides after --cfg-options")
    return tuple(flagged) + tuple(trailing)


def _quiet_libraries() -> None:
    import logging
    import warnings

    # Notes from the libraries that say nothing to a user: an optional bitsandbytes CPU kernel package,
    # transformers' deprecations of names vlft does not call itself, and torch's weights-only loader noting a
    # pickle protocol other than 2 in DeepSpeed's state files (resuming reads them whole or fails in one line).
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", message=r"Detected pickle protocol \d+ in the checkpoint", category=UserWarning,
                            module="torch")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class OneLineErrors(click.Group):
    """click's usage errors (a bad flag, a missing argument) as one `error:` line too, with exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vlft")
def main():
    """Fine-tune vision-language models (InternVL, LLaVA) with LoRA/QLoRA, then merge and convert.

    \b
    Start here:  vlft demo                      (the whole journey on a tiny local model)
    Your data:   vlft copy-config internvl2_5_1b_lora my.py ; vlft check-data my.py ; vlft train my.py
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Where checkpoints and logs go.")
@click.option("--deepspeed", "deepspeed", default=None,
              help="zero2 (default from the config), zero3, none, or a DeepSpeed JSON file.")
@click.option("--cfg-options", multiple=True, metavar="KEY=VALUE", help=CFG_OPTIONS_HELP)
@click.option("--resume", "resume", is_flag=False, flag_value="auto", default=None,
              help="Continue from the newest intact checkpoint in the work dir (auto) or from a checkpoint DIR.")
@click.option("--resume-allow-changes", is_flag=True,
              help="Resume although data or schedule settings changed; they apply from the resume step.")
@click.option("--init-from", type=click.Path(file_okay=False), default=None, metavar="CHECKPOINT",
              help="Start from a checkpoint's adapters (e.g. an SFT run's, continued by DPO: its reference).")
@user_errors
def train(config, overrides, work_dir, deepspeed, cfg_options, resume, resume_allow_changes, init_from):
    """Fine-tune the model a CONFIG describes on its datasets.

    \b
    Example:
      vlft train configs/internvl2_5_1b_lora.py --work-dir work/food --cfg-options schedule.lr=1e-4
      torchrun --nproc_per_node 8 -m vlft.cli train configs/internvl2_2b_lora.py --deepspeed zero2
    Ctrl-C, SIGTERM or SIGUSR1 save a checkpoint of the last finished step; continue with --resume auto.
    Resuming loads no pickled code: checkpoints are safetensors + JSON, DeepSpeed's read weights-only.
    """
    cfg_options = _cfg_options(cfg_options, overrides)
    _quiet_libraries()
    from vlft.engine.train import TrainingInterrupted, train_from_config

    try:
        train_from_config(config, work_dir=work_dir, deepspeed=deepspeed, cfg_options=cfg_options, resume=resume,
                          allow_changes=resume_allow_changes, init_from=init_from)
    except TrainingInterrupted as stopped:
        again = ["vlft", "train", config, "--work-dir", str(stopped.result.work_dir), "--resume", "auto",
                 *(["--init-from", init_from] if init_from else []),
                 *(["--cfg-options", *cfg_options] if cfg_options else [])]
        if stopped.result.checkpoint is not None:
            click.echo(f"stopped by {stopped.signal_name}; continue with: {shlex.join(again)}", err=True)
        sys.exit(stopped.exit_code)


@main.command("check-data")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="")
@click.option("--cfg-options", multiple=True, metavar="KEY=VALUE", help=CFG_OPTIONS_HELP)
@user_errors
def check_data(config, overrides, cfg_options):
    """Read every sample of CONFIG's datasets and report problems, tiles and token budgets (read-only).

    \b
    Example:
      vlft check-data configs/internvl2_5_1b_lora.py
    """
    cfg_options = _cfg_options(cfg_options, overrides)
    _quiet_libraries()
    from vlft.engine.check_data import check_data_from_config

    sys.exit(check_data_from_config(config, cfg_options=cfg_options))


@main.command()
@click.argument("checkpoint", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--max-shard-size", default="2GB", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@user_errors
def merge(checkpoint, out, dtype, max_shard_size, overwrite):
    """Fold a training CHECKPOINT's LoRA and connector into the full-precision base; write OUT.

    \b
    Example:
      vlft merge work/food/checkpoint-1000 work/food/merged --dtype bf16
    """
    _quiet_libraries()
    from vlft.export.merge import merge_checkpoint

    merge_checkpoint(checkpoint, out, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite)


class _ExportTargetChoice(click.Choice):
    """`--to`: the names in vlft.export.targets.TARGETS, read only when click needs them (that package imports
    torch, which the CLI's start-up must not)."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self):
        from vlft.export.targets import TARGETS

        return tuple(TARGETS)

    @choices.setter
    def choices(self, _value):  # click.Choice.__init__ assigns; the registry is the source
        pass


class _ExportTargetOption(click.Option):
    """`--to`'s help: each target of vlft.export.targets with what it is for, read only when help is shown."""

    def get_help_record(self, ctx):
        from vlft.export.targets import targets_help

        self.help = targets_help()
        return super().get_help_record(ctx)


@main.command()
@click.argument("checkpoint", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--to", "target", type=_ExportTargetChoice(), required=True, cls=_ExportTargetOption)
@click.option("--verify/--no-verify", default=None,
              help="Compare logits and greedy tokens with transformers' class (default: on when importable).")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
@click.option("--max-shard-size", default="2GB", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--outtype", type=click.Choice(["f16", "bf16", "q8_0"]), default="f16", show_default=True,
              help="--to gguf: the LLM's GGUF type (the mmproj is always f16).")
@click.option("--quantize", multiple=True, metavar="TYPE",
              help="--to gguf: also write the LLM quantized by llama-quantize (q4_k_m, q5_k_m, ...); repeatable.")
@click.option("--llama-cpp", "llama_cpp", type=click.Path(file_okay=False), default=None,
              help="--to gguf: a llama.cpp checkout (or unpacked llama-cpp-python sdist); default $LLAMA_CPP_DIR.")
@user_errors
def convert(checkpoint, out, target, verify, dtype, max_shard_size, overwrite, outtype, quantize, llama_cpp):
    """Write CHECKPOINT (a training checkpoint or a merged model) in an official format to OUT.

    \b
    Example:
      vlft convert work/food/checkpoint-1000 work/food/hf --to hf --verify
    """
    _quiet_libraries()
    from vlft.export.convert import convert_checkpoint

    options = {"outtype": outtype, "quantize": tuple(quantize), "llama_cpp": llama_cpp} if target == "gguf" else {}
    gguf_only = [flag for flag, given in (("--outtype", outtype != "f16"), ("--quantize", quantize),
                                          ("--llama-cpp", llama_cpp)) if given]
    if target != "gguf" and gguf_only:
        raise click.UsageError(f"{gguf_only[0]} is for --to gguf only")
    convert_checkpoint(checkpoint, out, target=target, verify=verify, dtype=dtype,
                       max_shard_size=max_shard_size, overwrite=overwrite, options=options)


@main.command()
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--image", type=click.Path(dir_okay=False), help="Image to talk about.")
@click.option("--prompt", help="One-shot question; without it, an interactive chat starts.")
@click.option("--max-new-tokens", default=256, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--template", default=None, help=TEMPLATE_HELP)
@user_errors
def chat(model, image, prompt, max_new_tokens, temperature, top_p, template):
    """Talk to MODEL (merged, converted hf, or a training checkpoint) about an image.

    \b
    Example:
      vlft chat work/food/hf --image dish.jpg --prompt "Which dish is this?"
      vlft chat work/food/checkpoint-1000 --image dish.jpg      (interactive)
    Interactive commands: /image PATH (the next question shows it), /reset, /quit
    """
    _quiet_libraries()
    from vlft.infer.chat import run_chat

    run_chat(model, image=image, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
             top_p=top_p, template=template)


@main.command()
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--compare", type=click.Path(file_okay=False),
              help="A second model (e.g. the base) that gets the same questions; its answers are shown beside.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 lets other machines in (no authentication unless --auth).")
@click.option("--port", default=7860, show_default=True)
@click.option("--auth", metavar="USER:PASS", help="Ask for this user name and password before the page opens.")
@click.option("--max-new-tokens", default=256, show_default=True, help="The page's starting value.")
@click.option("--temperature", default=0.0, show_default=True, help="The page's starting value; 0 means greedy.")
@click.option("--top-p", default=1.0, show_default=True, help="The page's starting value.")
@click.option("--template", default=None, help=TEMPLATE_HELP)
@user_errors
def web(model, compare, host, port, auth, max_new_tokens, temperature, top_p, template):
    """Chat with MODEL in a browser; with --compare, with a second model side by side (needs vlft[web]).

    \b
    Example:
      vlft web work/food/hf --compare base/            (then open http://127.0.0.1:7860)
    Upload an image, ask, see both answers stream and the tiles each image was cut into.
    """
    _quiet_libraries()
    from vlft.infer._generate import GenerationSettings
    from vlft.infer.web import serve

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    serve(model, compare=compare, host=host, port=port, auth=auth, template=template, settings=settings)


@main.command("eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False),
              help="Closed-set VQA / multiple-choice file (LLaVA, ShareGPT or FoodieQA-style).")
@click.option("--image-root", type=click.Path(file_okay=False), help="Image paths are relative to this.")
@click.option("--out", type=click.Path(dir_okay=False), help="JSONL of every prediction.")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--max-new-tokens", default=16, show_default=True)
@click.option("--template", default=None, help=TEMPLATE_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (never the --data file).")
@user_errors
def evaluate(models, data, image_root, out, batch_size, max_new_tokens, template, overwrite):
    """Accuracy of one or more MODELS on a closed-set file (two models: a before/after table).

    \b
    DATA rows (JSON list or JSONL), either shape:
      LLaVA/ShareGPT conversation + image: the reference is "answer" or the last assistant turn
      {"image": "a.jpg", "question": "Which dish?", "choices": ["noodles", "dumplings"],
       "answer": "B" (or 1, or "dumplings"), "category": "main"}
    "choices" makes a row multiple-choice: a reply "B", "(B)", "B. dumplings" or "dumplings" reads as B;
    one naming no option is wrong and counted as unparseable.

    \b
    Example:
      vlft eval base/ work/food/hf --data food_test.json --image-root images/ --out preds.jsonl
    """
    _quiet_libraries()
    from vlft.infer.evaluate import run_eval

    run_eval(list(models), data, image_root=image_root, out=out, batch_size=batch_size,
             max_new_tokens=max_new_tokens, template=template, overwrite=overwrite)


@main.command()
@click.option("--work-dir", type=click.Path(file_okay=False), default="vlft-demo", show_default=True)
@click.option("--steps", default=None, type=int, help="Training steps (default: the demo's own).")
@user_errors
def demo(work_dir, steps):
    """Run the whole journey on a tiny local model: data, check, train, merge, convert, evaluate.

    \b
    Example:
      vlft demo --work-dir /tmp/vlft-demo
    """
    _quiet_libraries()
    from vlft.demo import run_demo

    run_demo(work_dir, steps=steps)


@main.group()
def cache():
    """The encoded-dataset cache that train and check-data share ($VLFT_CACHE_DIR or ~/.cache/vlft/datasets).

    \b
    Example:
      vlft cache list
      vlft cache clear --older-than 30
    """


@cache.command("list")
def cache_list():
    """List the caches: key, rows, size, last use and what they encode."""
    from vlft.data.cache import cache_root, list_caches

    entries = list_caches()
    click.echo(f"{cache_root()}: {len(entries)} cache(s)")
    for entry in entries:
        click.echo(entry.line())


@cache.command("clear")
@click.option("--older-than", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="Only caches unused for this many days.")
def cache_clear(older_than):
    """Remove caches (all, or those unused for --older-than DAYS); the next run re-encodes."""
    from vlft.data.cache import clear_caches

    removed = clear_caches(older_than_days=older_than)
    click.echo(f"removed {len(removed)} cache(s), {sum(e.size_bytes for e in removed) / 2**20:,.1f} MiB")


@main.command("list-configs")
@click.option("-p", "--pattern", default="", help="Only names containing this.")
def list_configs(pattern):
    """List the shipped configs (copy one with `vlft copy-config NAME DEST`).

    \b
    Example:
      vlft list-configs -p internvl
    """
    from vlft.shipped import shipped_configs

    for name, path in shipped_configs().items():
        if pattern in name:
            click.echo(f"{name:<32} {path}")


@main.command("copy-config")
@click.argument("name")
@click.argument("dest", type=click.Path())
@user_errors
def copy_config(name, dest):
    """Copy the shipped config NAME to DEST to start your own.

    \b
    Example:
      vlft copy-config internvl2_5_1b_lora my_food.py
    """
    from vlft.shipped import copy_shipped_config

    click.echo(f"copied to {copy_shipped_config(name, dest)}")


if __name__ == "__main__":
    main()
