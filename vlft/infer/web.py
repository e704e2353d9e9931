"""`vlft web`: chat with a model in the browser and, with --compare, with a second one (its base) side by side.

Every reply is `ChatSession.ask` (vlft.infer.chat), as in `vlft chat`: the same prompt building, tiling and stop
rule, so the page's answer equals the terminal's for the same image, prompt and settings. Tokens stream while
they are generated; when a reply is done its decoded text (stop words cut) replaces the stream. Each model keeps
its own history (its own earlier replies), as two `vlft chat` sessions would.

Bad input in the page (no question, a file that is not an image, an image too large) is answered by a visible
message under the input; the conversation and the server go on.

gradio is an optional extra (``pip install 'vlft[web]'``), imported only when the page is built.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import click
from PIL import Image

from vlft.data.record import Turn
from vlft.data.tiling import ImageError, load_image
from vlft.errors import ConfigError, DataError, VlftError
from vlft.infer._generate import GenerationSettings, PromptTooLong, check_template_flag, prompt_ids
from vlft.infer.chat import ChatSession
from vlft.infer.image_view import describe, image_views, tiling_summary

log = logging.getLogger(__name__)

#: Larger images are refused before decoding: PIL's own decompression-bomb threshold (~89 megapixels); the
#: tiles are at most a few megapixels anyway.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
#: gradio refuses larger uploads itself, with its own message.
MAX_FILE_SIZE = "50mb"
EXPOSE_HINT = "--host 0.0.0.0 (or this machine's address) lets other machines in"


@dataclass
class ServedModel:
    label: str      # the path as the user gave it, shown above its column
    model: object
    pipeline: object


@dataclass
class Conversation:
    """One browser tab's conversation: per served model, its turns and images so far and the messages shown."""

    turns: list[list[Turn]]
    images: list[list[str]]
    shown: list[list[dict]]
    asked: int = 0  # questions answered so far

    @classmethod
    def empty(cls, n_models: int) -> Conversation:
        return cls([[] for _ in range(n_models)], [[] for _ in range(n_models)], [[] for _ in range(n_models)])


@dataclass
class Page:
    """What one step of a request changes in the page; None leaves that part as it is."""

    conversation: Conversation
    notice: str = ""
    input: dict | None = None
    sees: str | None = None
    tiles: list | None = None


@dataclass
class WebChat:
    """The page's behaviour, free of gradio: a question in, page updates out (see `submit`)."""

    models: list[ServedModel]
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    def new(self) -> Conversation:
        return Conversation.empty(len(self.models))

    def submit(self, message: dict | None, max_new_tokens, temperature, top_p, conversation: Conversation | None):
        """Answer `message` ({"text", "files"}) with every model, streaming; yields Page updates."""
        conversation = conversation or self.new()
        text = ((message or {}).get("text") or "").strip()
        files = [_file_path(f) for f in (message or {}).get("files") or []]
        try:
            settings = GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
            if len(files) > 1:
                raise DataError(f"{len(files)} images in one question; send one, and the next with your next "
                                "question (the conversation keeps them all)")
            image = check_image(files[0]) if files else None
        except (VlftError, ImageError) as exc:
            yield Page(conversation, warning(exc), input={"text": text, "files": []})
            return
        if not text:
            hint = " about the image" if image else ""
            yield Page(conversation, warning(f"type a question{hint} first"), input={"text": "", "files": files})
            return
        yield from self._answer(conversation, text, image, settings)

    def _answer(self, before: Conversation, text: str, image: str | None, settings: GenerationSettings):
        work = deepcopy(before)
        for shown in work.shown:
            if image:
                shown.append({"role": "user", "content": {"path": image, "alt_text": Path(image).name}})
            shown.append({"role": "user", "content": text_message(text)})
            shown.append({"role": "assistant", "content": text_message("…")})
        sessions = [self._session(served, work, index, settings) for index, served in enumerate(self.models)]
        try:
            sees, tiles = self.what_the_model_sees(sessions, text, image)
        except (VlftError, ValueError) as exc:
            yield Page(before, warning(exc), input={"text": text, "files": [image] if image else []})
            return
        started, cleared = time.perf_counter(), False
        for index, (served, session) in enumerate(zip(self.models, sessions)):
            busy = f"{served.label} is answering…"
            try:
                stream = StreamedReply(session, text, image)
                for so_far in stream:
                    work.shown[index][-1] = {"role": "assistant", "content": text_message(so_far + " ▌")}
                    yield Page(work, busy, input=None if cleared else {"text": "", "files": []}, sees=sees, tiles=tiles)
                    cleared = True
            except (VlftError, ValueError) as exc:  # e.g. a prompt over the context: say so, keep the history
                hint = " (Clear forgets the conversation so far)" if isinstance(exc, PromptTooLong) and before.asked \
                    else ""
                yield Page(before, warning(f"{served.label}: {exc}{hint}"),
                           input={"text": text, "files": [image] if image else []})
                return
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the page dead: say it, log it
                log.exception("vlft web: generation failed")
                yield Page(before, warning(f"{served.label}: internal error {type(exc).__name__}: {exc} "
                                           "(the traceback is in the server's log)"),
                           input={"text": text, "files": [image] if image else []})
                return
            work.shown[index][-1] = {"role": "assistant", "content": text_message(stream.reply)}
            work.turns[index], work.images[index] = session.turns, session.images
        work.asked += 1
        seconds = time.perf_counter() - started
        yield Page(work, f"turn {work.asked} answered in {seconds:.1f} s", input=None if cleared else
                   {"text": "", "files": []}, sees=sees, tiles=tiles)

    @staticmethod
    def _session(served: ServedModel, conversation: Conversation, index: int, settings) -> ChatSession:
        session = ChatSession(served.model, served.pipeline, settings)
        session.turns, session.images = list(conversation.turns[index]), list(conversation.images[index])
        return session

    def what_the_model_sees(self, sessions: list[ChatSession], text: str, image: str | None) -> tuple[str, list]:
        """Markdown (per model: tiling, each image's tiles and tokens, the prompt's length) and the tile gallery."""
        lines, tiles, shown_cuts = [], [], []
        has_images = image is not None or any(session.images for session in sessions)
        for served, session in zip(self.models, sessions):
            sample = session.sample(text, image)
            pipeline = served.pipeline
            views = image_views(pipeline, sample)
            n_ids = len(prompt_ids(pipeline, sample))
            image_tokens = sum(view.image_tokens for view in views)
            lines.append(f"\n**{served.label}** — template {pipeline.template.name}; "
                         f"tiling {tiling_summary(pipeline, len(views))}\n")
            lines += [f"- {describe(view, number, pipeline)}" for number, view in enumerate(views, 1)]
            lines.append(f"- prompt: {n_ids} tokens, {image_tokens} of them image tokens")
            cut = [(view.size, view.grid, view.extra, view.tiles[0].size, len(view.tiles)) for view in views]
            if cut in shown_cuts:  # the same tiles as a column already shown
                continue
            shown_cuts.append(cut)
            prefix = f"{served.label}: " if len(shown_cuts) > 1 else ""
            for number, view in enumerate(views, 1):
                cols, rows = view.grid
                grid = f"grid {cols}×{rows}" if len(view.grid_tiles) > 1 else "one tile"
                tiles.append((view.grid_image, f"{prefix}image {number}: {grid}"))
                if view.extra_tile is not None:
                    tiles.append((view.extra_tile, f"{prefix}image {number}: {view.extra}"))
        if not has_images:
            lines.insert(0, "No image yet: drop one in the box with your question.")
        return "\n".join(lines), tiles


class StreamedReply:
    """`session.ask` in a thread: iterating gives the text so far; then `.reply` is ask's answer.

    What ask raised is raised by the iteration, after the stream ends.
    """

    def __init__(self, session: ChatSession, text: str, image: str | None):
        from transformers import TextIteratorStreamer

        # as `vlft chat`'s streamer: the model's generate returns only new tokens, so no prompt to skip
        self.streamer = TextIteratorStreamer(session.pipeline.tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.reply: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(session, text, image), daemon=True)
        self.thread.start()

    def _run(self, session: ChatSession, text: str, image: str | None) -> None:
        try:
            self.reply = session.ask(text, image, streamer=self.streamer)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who reports it
            self.error = exc
            self.streamer.end()  # a failure before generate() would otherwise leave the reader waiting

    def __iter__(self):
        so_far = ""
        for piece in self.streamer:
            if piece:
                so_far += piece
                yield so_far
        self.thread.join()
        if self.error is not None:
            raise self.error


def check_image(path: str) -> str:
    """`path` if it is an image the page takes; DataError / ImageError naming the file otherwise."""
    name = Path(path).name
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Exception:  # noqa: BLE001 - PIL raises several types for a file that is not an image
        raise ImageError(f"{name} is not an image (its contents are not PNG, JPEG, WebP or another format PIL "
                         "reads); upload a picture") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(f"{name} is {width}×{height} = {width * height / 1e6:.0f} megapixels, over the page's "
                        f"limit of {MAX_IMAGE_PIXELS / 1e6:.0f}; downscale it (the model sees tiles of a few "
                        "hundred pixels anyway)")
    try:
        load_image(path)  # the full decode: a truncated file fails here
    except ImageError as exc:
        reason = exc.__cause__ or exc
        raise ImageError(f"{name} cannot be decoded ({reason}); re-save it as PNG or JPEG") from None
    return path


def warning(message) -> str:
    return f"⚠️ {message}"


def text_message(text: str) -> dict:
    """A chat message's text as gradio shows it verbatim (a bare str would be dedented by gradio)."""
    return {"type": "text", "text": text}


def _file_path(item) -> str:
    """A MultimodalTextbox file: a path, or a dict / FileData with one."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return item.get("path") or item["name"]
    return item.path


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """--auth USER:PASS -> (user, password)."""
    if auth is None:
        return None
    user, colon, password = auth.partition(":")
    if not colon or not user or not password:
        raise ConfigError("--auth must be USER:PASS (a user name, a colon, a password), e.g. --auth demo:s3cret")
    return user, password


def exposure_line(host: str, auth: tuple[str, str] | None) -> str:
    """One line: who can reach the page, how to let others in, and whether it asks for a password."""
    local = host in ("127.0.0.1", "localhost", "::1")
    where = f"listening on {host} only (this machine); {EXPOSE_HINT}" if local else \
        f"listening on {host}: other machines can reach it"
    guard = f"a password is required (--auth user {auth[0]!r})" if auth else \
        "no authentication: anyone who reaches the port can use the models (add --auth USER:PASS)"
    return f"{where}; {guard}"


def check_port(host: str, port: int) -> None:
    """ConfigError unless `host`:`port` can be listened on (said before the slow model loads)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                          "choose another --port (or --host)") from None


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio
    except ImportError:
        raise ConfigError("vlft web needs gradio, an optional extra: pip install 'vlft[web]'") from None
    return gradio


CSS = """
#vlft-notice p { margin: 0; }
footer { display: none !important; }
"""


def build_page(chat: WebChat, title: str):
    """The gradio Blocks of the page (not launched)."""
    gr = import_gradio()
    settings = chat.settings
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        conversation = gr.State(None)
        gr.Markdown(f"## {title}")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    chats = [gr.Chatbot(label=served.label, elem_id=f"vlft-chat-{index}", height=460,
                                        render_markdown=False, buttons=["copy"], feedback_options=None,
                                        placeholder="Upload an image and ask about it.")
                             for index, served in enumerate(chat.models)]
                box = gr.MultimodalTextbox(elem_id="vlft-input", file_types=["image"], file_count="single",
                                           show_label=False, sources=["upload"],
                                           placeholder="Drop or upload an image, type a question, press Enter")
                notice = gr.Markdown("", elem_id="vlft-notice")
                clear = gr.Button("Clear the conversation", elem_id="vlft-clear", variant="secondary")
            with gr.Column(scale=2):
                with gr.Accordion("Generation settings", open=True):
                    max_new = gr.Slider(1, 2048, value=settings.max_new_tokens, step=1, label="max new tokens",
                                        elem_id="vlft-max-new-tokens")
                    temperature = gr.Slider(0, 2, value=settings.temperature, step=0.05,
                                            label="temperature (0: greedy)", elem_id="vlft-temperature")
                    top_p = gr.Slider(0.05, 1, value=settings.top_p, step=0.05,
                                      label="top-p (with temperature > 0)", elem_id="vlft-top-p")
                with gr.Accordion("What the model sees", open=True):
                    sees = gr.Markdown("No image yet: drop one in the box with your question.",
                                       elem_id="vlft-sees")
                    tiles = gr.Gallery(elem_id="vlft-tiles", show_label=False, columns=2, height=300,
                                       object_fit="contain", allow_preview=True, interactive=False)

        def outputs(update: Page) -> tuple:
            keep = gr.skip()
            shown = tuple(update.conversation.shown)
            return (update.input if update.input is not None else keep, *shown, update.notice,
                    update.sees if update.sees is not None else keep,
                    update.tiles if update.tiles is not None else keep, update.conversation)

        def on_submit(message, max_new_tokens, temp, top, state):
            for update in chat.submit(message, max_new_tokens, temp, top, state):
                yield outputs(update)

        def on_clear():
            return outputs(Page(chat.new(), "conversation cleared", input={"text": "", "files": []},
                                sees="No image yet: drop one in the box with your question.", tiles=[]))

        every = [box, *chats, notice, sees, tiles, conversation]
        # one generation at a time: the models are shared by every tab, and a CPU is busy with one
        box.submit(on_submit, [box, max_new, temperature, top_p, conversation], every, concurrency_limit=1,
                   show_progress="hidden")
        clear.click(on_clear, None, every, show_progress="hidden")
        for chatbot in chats:  # a column's own trash button clears the whole conversation too
            chatbot.clear(on_clear, None, every, show_progress="hidden")
    return page


def load_models(paths: list[str], template: str | None) -> list[ServedModel]:
    from vlft.infer.loading import load_for_inference

    served = []
    for path in paths:
        model, pipeline = load_for_inference(path, template=template)
        served.append(ServedModel(str(path), model, pipeline))
    return served


def serve(model_path: str, *, compare: str | None = None, host: str = "127.0.0.1", port: int = 7860,
          auth: str | None = None, template: str | None = None,
          settings: GenerationSettings = GenerationSettings()) -> None:
    """Load the model(s), serve the page until Ctrl-C."""
    credentials = parse_auth(auth)  # every flag is checked before the (slow) loads
    check_template_flag(template)
    check_port(host, port)
    gr = import_gradio()
    chat = WebChat(load_models([model_path] + ([compare] if compare else []), template), settings)
    title = f"vlft web — {model_path}" + (f" vs {compare}" if compare else "")
    page = build_page(chat, title)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web-font download
                           font_mono=["ui-monospace", "monospace"])
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, auth=credentials, share=False, prevent_thread_lock=True,
            quiet=True, ssr_mode=False, show_error=True, max_file_size=MAX_FILE_SIZE, theme=theme, css=CSS,
            mcp_server=False, enable_monitoring=False)
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc}); choose another --port") \
            from None
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"vlft web: http://{shown_host}:{port}  ({title[len('vlft web — '):]})")
    click.echo(exposure_line(host, credentials))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        page.close()
