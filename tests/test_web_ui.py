"""The chat page of `mm deploy` (swiftlite/server/static), end to end in a real browser: Debian's headless Chromium
driven by Playwright, against the real server (build_app + uvicorn) on the tiny Qwen2-VL checkpoint and a LoRA
adapter. One server and one browser serve the whole module.

The server is started with --api_key, so the page first meets a 401 and must ask for the key. The streaming tests
use the adapter: the tiny base model only writes newlines, the adapter writes visible words."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from test_deploy_support import make_lora, metric, running_server

CHROMIUM = "/usr/bin/chromium"
KEY = "web-ui-secret"
ADAPTER = "style"
STATIC = Path(__file__).resolve().parents[1] / "swiftlite" / "server" / "static"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.slow


# ---- the page's files, no browser ------------------------------------------------------------------------
def test_static_files_name_no_external_url():
    """The page must work offline: nothing under static/ may load from elsewhere. The SVG namespace is a name
    (createElementNS), never fetched."""
    files = sorted(STATIC.glob("*"))
    assert {f.name for f in files} >= {"index.html", "app.js", "style.css", "markdown.js", "grounding.js"}
    for path in files:
        text = path.read_text()
        urls = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s'\"<>)]*", text, flags=re.I)
                if u != "http://www.w3.org/2000/svg"]
        assert urls == [], f"{path.name} names external URLs: {urls}"
        assert not re.search(r"@import|url\(\s*['\"]?(?!data:)\w", text), f"{path.name} loads a resource"


# ---- one server, one browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(qwen2_vl_dir, tmp_path_factory):
    from swiftlite.testing.tiny import never_stopping_copy

    # Answers that run to max_tokens (the page's "cut at max tokens" note, Stop on a long answer).
    model = never_stopping_copy(qwen2_vl_dir, tmp_path_factory.mktemp("web_ui") / "qwen2-vl")
    adapter = make_lora(model, tmp_path_factory.mktemp("web_ui") / "style", seed=3)
    with running_server(model=str(model), lora_modules=[f"{ADAPTER}={adapter}"], api_key=KEY,
                        max_new_tokens=16) as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install chromium (scripts/test.sh does)"
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user data dir: no state from earlier runs
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1100, "height": 800},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context.set_default_timeout(20_000)
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    """A new tab on the page, with the API key entered and the adapter picked (sessionStorage is per tab)."""
    page = browser.new_page()
    page.goto(server.url + "/")
    page.locator("#api-key").fill(KEY)
    page.locator("#api-key").press("Enter")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    page.select_option("#model", ADAPTER)
    page.click("summary")  # open the settings
    page.fill("#temperature", "0")
    yield page
    page.close()


def answers(page):
    return page.locator(".message.assistant")


def send(page, text: str, files=None):
    if files is not None:
        page.set_input_files("#files", files)
        page.wait_for_function(f"document.querySelectorAll('#attachments .attachment').length === {len(files)}")
    page.fill("#input", text)
    with page.expect_request("**/v1/chat/completions") as request:
        page.press("#input", "Enter")
    return json.loads(request.value.post_data)


def wait_answered(page, count: int):
    page.wait_for_function(f"document.querySelectorAll('.message.assistant:not(.streaming)').length === {count}")


# ---- the tests -------------------------------------------------------------------------------------------
def test_root_serves_the_page_and_web_ui_false_turns_it_off(server):
    from starlette.testclient import TestClient

    from swiftlite.server.app import ServerSettings, create_app

    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "swiftlite chat" in page.text  # open: the page asks for the key itself
    assert httpx.get(server.url + "/static/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(server.base_url + "/models").status_code == 401
    card = httpx.get(server.base_url + "/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]
    assert card["modalities"] == ["text", "image"]
    # The same served model with web_ui off: / is the API's 404 (no lifespan: the engine is not started twice).
    served = server.app.state.server
    # TestClient sends `Host: testserver`, which a loopback server answers only when told (--allowed_hosts).
    off = create_app(served.engine, served.template, served.models,
                     ServerSettings(api_key=KEY, web_ui=False, allowed_hosts=["testserver"]))
    response = TestClient(off).get("/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_web_ui_flag_parses(capsys):
    """`--web_ui false` is accepted by the CLI (the bad port then fails before any model loads)."""
    from swiftlite.cli import main

    assert main(["deploy", "--model", "x", "--web_ui", "false", "--port", "70000"]) == 1
    assert "--port 70000" in capsys.readouterr().err
    assert main(["deploy", "--model", "x", "--web-ui", "maybe", "--port", "70000"]) == 2
    assert "maybe" in capsys.readouterr().err
    assert main(["deploy", "--help"]) == 0
    assert "--web_ui" in capsys.readouterr().out


def test_page_asks_for_the_api_key_after_a_401(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    error = page.locator("#error")
    error.wait_for()
    assert "needs an API key" in error.inner_text()
    assert page.locator("#api-key").is_visible() and page.evaluate("document.activeElement.id") == "api-key"
    page.fill("#api-key", "wrong")
    page.press("#api-key", "Enter")
    page.wait_for_function("document.getElementById('error').textContent.includes('did not accept')")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Enter")
    page.wait_for_function("document.querySelectorAll('#model option').length === 2")
    assert error.is_hidden()
    options = page.locator("#model option").all_inner_texts()
    assert options == ["qwen2-vl", "style (LoRA adapter on qwen2-vl)"]
    assert page.evaluate("sessionStorage.getItem('swiftlite.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    page.close()


def test_images_stream_an_answer_then_a_second_turn(page, shape_images):
    page.fill("#system", "You answer briefly.")
    page.fill("#top-p", "0.9")
    page.fill("#max-tokens", "40")
    # Record every text the answer shows while it streams: several growing texts = streamed, not one block.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const answer = document.querySelector('.message.assistant.streaming .content');
            if (answer && answer.textContent && !window.seen.includes(answer.textContent)) window.seen.push(answer.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    body = send(page, "What shapes are these?", [shape_images["red"], shape_images["green"]])
    assert body["model"] == ADAPTER and body["stream"] is True
    assert body["temperature"] == 0 and body["top_p"] == 0.9 and body["max_tokens"] == 40
    assert body["messages"][0] == {"role": "system", "content": "You answer briefly."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:2])
    wait_answered(page, 1)
    first = answers(page).first.locator(".content").inner_text()
    assert first.strip()  # visible words (the adapter's)
    assert len(page.evaluate("window.seen")) >= 2, "the answer did not grow while streaming"
    assert page.locator(".message.user .media img.thumb").count() == 2  # thumbnails in the history
    assert page.locator("#attachments .attachment").count() == 0
    assert page.locator(".message.assistant .note").inner_text() == "Cut at the max tokens setting."

    body = send(page, "And the second one?")
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert re.sub(r"\s", "", body["messages"][2]["content"]) == re.sub(r"\s", "", first)  # the answer, as history
    assert body["messages"][3]["content"] == "And the second one?"
    wait_answered(page, 2)
    assert answers(page).nth(1).locator(".content").inner_text().strip()
    page.click("#clear")
    assert page.locator(".message").count() == 0


def test_stop_ends_a_long_answer_and_the_server_cancels_it(page, server):
    page.fill("#max-tokens", "3000")  # a minute of tokens on this CPU: still streaming when Stop is pressed
    cancelled = metric(server, "swiftlite_requests_cancelled_total")
    send(page, "Tell me a long story.")
    page.wait_for_function("(document.querySelector('.message.assistant.streaming .content')"
                           " || {}).textContent?.length > 20")
    assert page.locator("#stop").is_visible() and page.locator("#send").is_disabled()
    page.click("#stop")
    wait_answered(page, 1)
    assert page.locator(".message.assistant .note").inner_text() == "Stopped."
    assert page.locator("#stop").is_hidden() and page.locator("#send").is_enabled()
    assert answers(page).first.locator(".content").inner_text().strip()  # the partial answer stays
    deadline = 0
    while metric(server, "swiftlite_requests_cancelled_total") == cancelled and deadline < 100:
        page.wait_for_timeout(50)
        deadline += 1
    assert metric(server, "swiftlite_requests_cancelled_total") == cancelled + 1
    # Escape in the message box stops too, and the page goes on: the next turn is answered.
    send(page, "Another one.")
    page.wait_for_function("(document.querySelector('.message.assistant.streaming .content')"
                           " || {}).textContent?.length > 5")
    page.press("#input", "Escape")
    wait_answered(page, 2)
    assert answers(page).nth(1).locator(".note").inner_text() == "Stopped."
    page.fill("#max-tokens", "4")
    body = send(page, "Shorter, please.")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2 + ["user"]
    wait_answered(page, 3)


def test_server_errors_are_shown_and_the_page_stays_usable(page):
    broken = {"name": "broken.png", "mimeType": "image/png", "buffer": b"this is not a PNG"}
    send(page, "What is this?", [broken])
    error = page.locator("#error")
    error.wait_for()
    assert error.inner_text().startswith("The server could not use this message:")
    assert "image" in error.inner_text()
    # The failed turn went back into the composer to be fixed, and nothing stayed in the conversation.
    assert page.locator(".message").count() == 0
    assert page.input_value("#input") == "What is this?"
    assert page.locator("#attachments .attachment").count() == 1
    page.click("#attachments .remove")
    page.fill("#max-tokens", "4")
    send(page, "Hello")
    wait_answered(page, 1)
    assert error.is_hidden()
    # Audio is refused by a model whose card says it takes no audio, in words, before anything is sent.
    assert page.get_attribute("#files", "accept") == "image/*"
    page.set_input_files("#files", {"name": "a.wav", "mimeType": "audio/wav", "buffer": b"RIFF0000WAVE"})
    page.wait_for_function("document.getElementById('error').textContent.includes('does not take audio')")
    assert page.locator("#attachments .attachment").count() == 0


def test_model_text_is_rendered_safely_as_markdown(page):
    page.evaluate("""swiftliteRenderAnswer('**bold** and `code` <img src=x onerror="window.pwned=1"> <b>raw</b>\\n'
        + '- one\\n- two\\n\\n```python\\nprint(\"<script>alert(1)</script>\")\\n```\\n[link](javascript:alert(1))')""")
    answer = answers(page).first
    assert answer.locator("strong").inner_text() == "bold"
    assert answer.locator("li").all_inner_texts() == ["one", "two"]
    assert answer.locator("pre code").inner_text() == 'print("<script>alert(1)</script>")'
    assert answer.locator("img, b, script, a").count() == 0  # model HTML stays text; javascript: links too
    assert '<img src=x onerror="window.pwned=1">' in answer.inner_text()
    assert page.evaluate("window.pwned") is None


def test_keyboard_and_phone_width(page):
    page.set_viewport_size({"width": 375, "height": 740})
    page.focus("#input")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("#input") == "line one\nline two" and page.locator(".message").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling on a phone
    for control in ("#model", "#input", "#send", "#clear", "#files"):
        label = page.evaluate(f"document.querySelector('{control}').labels?.[0]?.textContent.trim()"
                              f" || document.querySelector('{control}').textContent.trim()")
        assert label, f"{control} has no label"
    send_box = page.locator("#send").bounding_box()
    assert send_box["x"] >= 0 and send_box["x"] + send_box["width"] <= 375
    page.fill("#max-tokens", "4")
    page.press("#input", "Enter")
    wait_answered(page, 1)


def test_boxes_are_drawn_on_the_last_image(page, shape_images, tmp_path):
    page.fill("#max-tokens", "2")
    send(page, "Where is the circle?", [shape_images["blue"], shape_images["red"]])
    wait_answered(page, 1)
    # The red circle spans pixels 8..48 of the 56 px image: 143..857 on Qwen-VL's 0-1000 scale.
    page.evaluate("""swiftliteRenderAnswer('The <ref>red circle</ref><box>(143,143),(857,857)</box> is in the middle.\\n'
        + 'As JSON:\\n```json\\n[{\"bbox_2d\": [0, 0, 28, 28], \"label\": \"top left\"}]\\n```')""")
    figure = answers(page).nth(1).locator("figure.grounding")
    page.wait_for_function("document.querySelector('figure.grounding')?.dataset.drawn === '2'")
    assert figure.locator("img").get_attribute("src") == page.locator(".message.user img.thumb").nth(1).get_attribute("src")
    assert figure.locator("svg text.box-label").all_text_contents() == ["red circle", "top left"]
    rects = [{k: float(figure.locator("svg rect.box").nth(i).get_attribute(k)) for k in ("x", "y", "width", "height")}
             for i in range(2)]
    assert rects[0] == pytest.approx({"x": 8.008, "y": 8.008, "width": 39.984, "height": 39.984}, abs=0.01)
    # Pixel boxes of Qwen2.5-VL are in its resized frame (56 px stays 56: a multiple of 28).
    assert rects[1] == pytest.approx({"x": 0, "y": 0, "width": 28, "height": 28}, abs=0.01)
    page.click("summary")  # fold the settings away: more room for the conversation in the screenshot
    shot = tmp_path / "web_ui_box.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "web_ui_box.png")
    assert shot.stat().st_size > 5000
    # The shown answer joins the real one as the assistant's turn: the next request still alternates roles.
    body = send(page, "Thanks")
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert "<ref>red circle</ref>" in body["messages"][1]["content"]
    wait_answered(page, 3)


def test_drop_and_paste_attach_images(page, shape_images):
    png = list(shape_images["green"].read_bytes())
    attach = """([bytes, how]) => {
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array(bytes)], 'shape.png', {type: 'image/png'}));
        if (how === 'drop') {
            window.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, cancelable: true}));
            window.dispatchEvent(new DragEvent('drop', {dataTransfer: data, cancelable: true}));
        } else {
            document.getElementById('input').dispatchEvent(
                new ClipboardEvent('paste', {clipboardData: data, cancelable: true, bubbles: true}));
        }
    }"""
    page.evaluate(attach, [png, "drop"])
    page.wait_for_function("document.querySelectorAll('#attachments .attachment').length === 1")
    assert page.locator("#drop-overlay").is_hidden()
    page.evaluate(attach, [png, "paste"])
    page.wait_for_function("document.querySelectorAll('#attachments .attachment').length === 2")
    assert page.get_attribute("#attachments img.thumb >> nth=1", "alt") == "shape.png"
