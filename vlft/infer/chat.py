"""`vlft chat`: talk to a model about an image, one-shot or multi-turn, streaming the reply as it is generated.

Interactive commands (one per line on stdin): ``/image PATH`` (the next question carries this image),
``/reset`` (forget the conversation), ``/quit`` (or end of input).
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from vlft.data.record import IMAGE_PLACEHOLDER, Sample, Turn
from vlft.data.tiling import load_image
from vlft.errors import VlftError
from vlft.infer._generate import (GenerationSettings, PromptTooLong, check_prompt_length, check_template_flag,
                                  generate_batch, prompt_ids, prompt_inputs)

HELP = "commands: /image PATH (next question shows it), /reset (forget the conversation), /quit"


class ChatSession:
    """A conversation with one model: its turns and images so far, prompted through the training template."""

    def __init__(self, model, pipeline, settings: GenerationSettings = GenerationSettings()):
        self.model = model
        self.pipeline = pipeline
        self.settings = settings
        self.turns: list[Turn] = []
        self.images: list[str] = []

    def reset(self) -> None:
        self.turns, self.images = [], []

    def sample(self, text: str, image: str | None = None) -> Sample:
        """The conversation so far plus the user's next turn (which carries `image` when given)."""
        user = f"{IMAGE_PLACEHOLDER}\n{text}" if image else text
        images = self.images + [str(image)] if image else self.images
        return Sample(id=f"turn-{len(self.turns) // 2 + 1}", source="chat", dataset="chat",
                      turns=(*self.turns, Turn("user", user)), images=tuple(images))

    def ask(self, text: str, image: str | None = None, *, streamer=None) -> str:
        """Generate the reply to `text` (streamed to `streamer` if given) and add both turns to the history."""
        sample = self.sample(text, image)
        ids = prompt_ids(self.pipeline, sample)
        check_prompt_length(self.model, len(ids), self.settings, where=f"chat turn {len(self.turns) // 2 + 1}")
        reply = generate_batch(self.model, self.pipeline, [prompt_inputs(self.pipeline, sample, ids)], self.settings,
                               streamer=streamer)[0]
        self.turns, self.images = list(sample.turns) + [Turn("assistant", reply)], list(sample.images)
        return reply


def echo_streamer(tokenizer):
    """A transformers TextStreamer that writes through click (so a CliRunner or a pipe sees it)."""
    from transformers import TextStreamer

    class _EchoStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            click.echo(text, nl=False)
            sys.stdout.flush()

    # the prompt is not part of the output: VisionLanguageModel.generate returns only new tokens
    return _EchoStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


def run_chat(model_path: str, *, image: str | None = None, prompt: str | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, template: str | None = None, stdin=None) -> list[str]:
    """One-shot with `prompt`; otherwise an interactive chat reading lines from `stdin`. Returns the replies."""
    from vlft.infer.loading import load_for_inference

    # every flag is checked before the (slow) model load
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    check_template_flag(template)
    if image is not None:
        load_image(image)  # a bad image fails before the (slow) model load
    model, pipeline = load_for_inference(model_path, template=template)
    session = ChatSession(model, pipeline, settings)
    streamer = echo_streamer(pipeline.tokenizer)
    if prompt is not None:
        reply = session.ask(prompt, image, streamer=streamer)
        click.echo()
        return [reply]
    return _interactive(session, image, streamer, stdin or sys.stdin)


def _interactive(session: ChatSession, image: str | None, streamer, stdin) -> list[str]:
    tty = stdin.isatty()
    click.echo(f"chat with {session.pipeline.template.name} template; {HELP}", err=True)
    if image:
        click.echo(f"image: {image}", err=True)
    pending, replies = image, []
    while True:
        if tty:
            click.echo("you> ", nl=False)
        line = stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            pending = None
            click.echo("conversation cleared", err=True)
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            if not path:
                click.echo("usage: /image PATH", err=True)
                continue
            try:
                load_image(path)
            except ValueError as exc:
                click.echo(f"error: {exc}", err=True)
                continue
            pending = str(Path(path).expanduser())
            click.echo(f"image: {pending} (shown with your next question)", err=True)
            continue
        if text.startswith("/"):
            click.echo(f"unknown command {text.split()[0]}; {HELP}", err=True)
            continue
        try:
            replies.append(session.ask(text, pending, streamer=streamer))
        except (ValueError, VlftError) as exc:  # e.g. a literal <image> in the text: say so, keep the conversation
            long_history = isinstance(exc, PromptTooLong) and session.turns
            hint = " (/reset forgets the conversation so far)" if long_history else ""
            click.echo(f"error: {exc}{hint}", err=True)
            continue
        click.echo()
        pending = None
    return replies
