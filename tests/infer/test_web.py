"""vlft web: the page answers as `vlft chat`, beside the base; bad input is a message; in a real browser too.

The end-to-end test starts `vlft web CHECKPOINT --compare BASE` on a free port of 127.0.0.1 and drives Debian's
chromium through selenium and Debian's chromedriver (no driver or browser download). Without chromium it is
skipped, except on CI (CI=true), where a missing browser is a failure.
"""
from __future__ import annotations

import io
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.data.tiling import tiles_for_image
from vlft.infer._generate import GenerationSettings
from vlft.infer.chat import ChatSession, run_chat

MAX_NEW = 10
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Set to a path (e.g. docs/web.png) to keep the end-to-end test's screenshot there too.
SCREENSHOT_ENV = "VLFT_WEB_SCREENSHOT"


def build_trained_checkpoint(base: Path, out: Path) -> Path:
    """A training checkpoint of `base` as `vlft train` writes it, every trainable tensor moved as if trained
    (LoRA B starts at zero, so an untouched one would answer exactly as the base)."""
    from vlft.config import spec_from_dict, spec_to_dict
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.trained_state import save_trained_state

    spec = spec_from_dict({"model": {"family": "internvl", "path": str(base)},
                           "data": {"template": "internvl2_5", "tiling": {"max_tiles": 4}}})
    vlm, tokenizer = build_vlm(spec.model)
    apply_training_policy(vlm, spec.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in vlm.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.05)
    save_trained_state(vlm, out, meta={"config": spec_to_dict(spec), "step": 1, "base_model": str(base)})
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{base, checkpoint, dish (112x112: a 2x2 grid + thumbnail at max_tiles 4), wide (a second image)}."""
    from vlft.demo_data import DISHES, draw_dish
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    root = tmp_path_factory.mktemp("web")
    base = make_tiny_internvl_hf(root / "base")
    dish, wide = root / "dish.png", root / "wide.png"
    draw_dish(DISHES[2], random.Random(0), 112).save(dish)
    Image.new("RGB", (120, 60), (30, 160, 60)).save(wide)
    return {"base": base, "checkpoint": build_trained_checkpoint(base, root / "checkpoint"), "dish": dish,
            "wide": wide}


@pytest.fixture(scope="module")
def web_chat(served):
    from vlft.infer.web import load_models, WebChat

    return WebChat(load_models([str(served["checkpoint"]), str(served["base"])], None),
                   GenerationSettings(max_new_tokens=MAX_NEW))


def _last(web_chat, message, conversation=None, max_new=MAX_NEW):
    pages = list(web_chat.submit(message, max_new, 0.0, 1.0, conversation))
    return pages, pages[-1]


def _reply(page, column):
    return page.conversation.shown[column][-1]["content"]["text"]


# ------------------------------------------------------------------------------ the page's behaviour, no browser

def test_replies_stream_then_equal_chat_sessions_over_two_turns_with_two_images(web_chat, served):
    pages, page = _last(web_chat, {"text": "Which dish?", "files": [str(served["dish"])]})
    assert len(pages) > 2 and pages[0].notice.endswith("is answering…")  # streamed token by token
    pages, page = _last(web_chat, {"text": "And this?", "files": [{"path": str(served["wide"])}]}, page.conversation)
    assert page.notice.startswith("turn 2 answered in ")
    for column, served_model in enumerate(web_chat.models):
        session = ChatSession(served_model.model, served_model.pipeline, GenerationSettings(max_new_tokens=MAX_NEW))
        first = session.ask("Which dish?", str(served["dish"]))
        second = session.ask("And this?", str(served["wide"]))
        assert page.conversation.turns[column][1].text == first and _reply(page, column) == second
        assert page.conversation.images[column] == [str(served["dish"]), str(served["wide"])]
    assert _reply(page, 0) != _reply(page, 1)  # the checkpoint is not its base
    # two images share max_tiles 4: 2 each -> the dish (square) is one tile, the wide one 2x1 + thumbnail
    assert "image 1 (112×112): grid 1×1 = 1 tile × 4 tokens = **4 image tokens**" in page.sees
    assert "image 2 (120×60): grid 2×1 + thumbnail = 3 tiles × 4 tokens = **12 image tokens**" in page.sees
    base = str(served["base"])  # max_tiles 12: 6 each, another cut, so its tiles are shown too, named
    assert [caption for _, caption in page.tiles] == [
        "image 1: one tile", "image 2: grid 2×1", "image 2: thumbnail",
        f"{base}: image 1: grid 2×2", f"{base}: image 1: thumbnail", f"{base}: image 2: grid 2×1",
        f"{base}: image 2: thumbnail"]


def test_what_the_model_sees_is_the_pixels_it_gets(web_chat, served):
    from vlft.infer.image_view import image_views

    pipeline = web_chat.models[0].pipeline
    session = ChatSession(web_chat.models[0].model, pipeline)
    (view,) = image_views(pipeline, session.sample("hi", str(served["dish"])))
    assert (view.grid, view.extra, len(view.tiles), view.image_tokens) == ((2, 2), "thumbnail", 5, 20)
    sessions = [ChatSession(served_model.model, served_model.pipeline) for served_model in web_chat.models]
    _, tiles = web_chat.what_the_model_sees(sessions, "hi", str(served["dish"]))
    assert [caption for _, caption in tiles] == ["image 1: grid 2×2", "image 1: thumbnail"]  # the same cut: once
    again = torch.cat([tiles_for_image(tile, pipeline.tiling, max_tiles=1) for tile in view.tiles])
    assert torch.allclose(again, pipeline.pixels(session.sample("hi", str(served["dish"]))), atol=1e-5)
    side = pipeline.tiling.tile_size
    assert view.grid_image.size == (2 * side + 4, 2 * side + 4)  # the cut shown with a gap


def test_an_empty_question_is_a_message_and_keeps_the_image(web_chat, served):
    pages, page = _last(web_chat, {"text": "   ", "files": [str(served["dish"])]})
    assert len(pages) == 1 and page.notice == "⚠️ type a question about the image first"
    assert page.input == {"text": "", "files": [str(served["dish"])]} and page.conversation.asked == 0


def test_a_text_file_named_png_is_a_message_and_the_next_question_works(web_chat, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not a picture at all")
    _, page = _last(web_chat, {"text": "What is it?", "files": [str(fake)]})
    assert page.notice.startswith("⚠️ photo.png is not an image") and page.input == {"text": "What is it?",
                                                                                       "files": []}
    _, page = _last(web_chat, page.input, page.conversation)
    assert page.notice.startswith("turn 1 answered") and page.conversation.asked == 1


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(web_chat, served, monkeypatch):
    import vlft.infer.web as web

    monkeypatch.setattr(web, "MAX_IMAGE_PIXELS", 100 * 100)
    _, page = _last(web_chat, {"text": "What is it?", "files": [str(served["dish"])]})
    assert page.notice.startswith("⚠️ dish.png is 112×112 = 0 megapixels, over the page's limit")
    assert "downscale it" in page.notice and page.conversation.asked == 0


def test_a_prompt_over_the_context_is_a_message_and_keeps_the_history(web_chat, served):
    _, page = _last(web_chat, {"text": "Which dish?", "files": [str(served["dish"])]})
    kept = page.conversation
    _, page = _last(web_chat, {"text": "More?", "files": []}, kept, max_new=4096)
    assert "over the model's max_position_embeddings" in page.notice and "Clear forgets" in page.notice
    assert page.conversation is kept and page.input == {"text": "More?", "files": []}


def test_bad_settings_in_the_page_are_a_message(web_chat):
    pages, page = _last(web_chat, {"text": "hi", "files": []}, max_new=0)
    assert page.notice == "⚠️ --max-new-tokens must be at least 1, got 0"


def test_the_flags_are_checked_before_loading_and_exposure_is_said_in_one_line(tmp_path):
    from vlft.infer.web import exposure_line

    result = CliRunner().invoke(main, ["web", str(tmp_path / "no-model"), "--auth", "only-a-user"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --auth must be USER:PASS")
    line = exposure_line("127.0.0.1", None)
    assert "127.0.0.1 only" in line and "--host 0.0.0.0" in line and "no authentication" in line
    assert "a password is required" in exposure_line("0.0.0.0", ("ann", "pw"))
    assert "pw" not in exposure_line("0.0.0.0", ("ann", "pw"))


def test_a_port_in_use_is_one_line_before_loading(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["web", str(tmp_path / "no-model"), "--port", str(port)])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen")
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_gradio_the_command_names_the_extra(monkeypatch):
    from vlft.errors import ConfigError
    from vlft.infer.web import import_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'vlft\[web\]'"):
        import_gradio()


# ------------------------------------------------------------------------------ end to end, in a real browser

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _need_browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        reason = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture()
def server(served, tmp_path):
    """`vlft web CHECKPOINT --compare BASE` on a free local port: (url, process, log path)."""
    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "vlft.cli", "web", str(served["checkpoint"]),
                                    "--compare", str(served["base"]), "--port", str(port),
                                    "--max-new-tokens", str(MAX_NEW)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"vlft web exited with {process.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vlft web did not answer on {url} in 120 s:\n{log.read_text()}")
                time.sleep(0.5)
        yield url, process, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture()
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100",
                     "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # Debian's driver: nothing fetched
    yield driver
    driver.quit()


def test_the_page_answers_as_vlft_chat_beside_the_base_in_a_real_browser(served, server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, process, log = server
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    browser.get(url)
    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#vlft-input textarea"))

    def notice() -> str:
        return browser.find_element(By.ID, "vlft-notice").text

    def ask(text: str, image: Path | None, done: str) -> None:
        if image is not None:
            browser.find_element(By.CSS_SELECTOR, "#vlft-input input[type=file]").send_keys(str(image))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#vlft-input img"))  # uploaded, shown
        if text:
            box.send_keys(text)
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: done in notice(), f"{done!r} never appeared; the notice says {notice()!r}")

    def replies(column: int) -> list[str]:
        bubbles = browser.find_elements(By.CSS_SELECTOR, f"#vlft-chat-{column} [data-testid='bot']")
        return [bubble.get_attribute("textContent") for bubble in bubbles]

    first, second = "Which dish is this?", "Are you sure?"
    ask(first, served["dish"], "turn 1 answered")
    # `vlft chat` with the same image, questions and settings (interactive: two turns)
    expected = {column: run_chat(str(path), image=str(served["dish"]), max_new_tokens=MAX_NEW,
                                 stdin=io.StringIO(f"{first}\n{second}\n"))
                for column, path in ((0, served["checkpoint"]), (1, served["base"]))}
    assert replies(0) == expected[0][:1] and replies(1) == expected[1][:1]
    assert replies(0) != replies(1)  # fine-tuned and base differ, side by side
    sees = browser.find_element(By.ID, "vlft-sees").text
    assert "grid 2×2 + thumbnail = 5 tiles × 4 tokens = 20 image tokens" in sees
    gallery = browser.find_element(By.ID, "vlft-tiles").get_attribute("textContent")
    assert "image 1: grid 2×2" in gallery and "image 1: thumbnail" in gallery
    screenshot = tmp_path / "web.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

    fake = tmp_path / "holiday.png"
    fake.write_text("a text file, renamed")
    ask(second, fake, "holiday.png is not an image")
    assert len(replies(0)) == 1 and box.get_attribute("value") == second  # nothing asked; the question kept
    ask("", None, "turn 2 answered")  # the next question works, with the conversation so far
    assert replies(0) == expected[0] and replies(1) == expected[1]

    browser.find_element(By.ID, "vlft-clear").click()
    wait.until(lambda d: "conversation cleared" in notice())
    assert replies(0) == [] and replies(1) == [] and process.poll() is None
    assert "127.0.0.1 only" in log.read_text() and "no authentication" in log.read_text()
