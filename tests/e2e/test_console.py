"""The device console at /console, in a real headless Chromium (Debian's `chromium`,
driven by Playwright), against a node with a token set.

The page must list the loaded model, run an image through it from the test box,
draw the boxes the result carries, load and unload models with its buttons, and
leave nothing at error level in the browser's log. A screenshot is kept under
$AISRV_TEST_ARTIFACTS (default tests/artifacts/).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support.bundles import write_bundle
from tests.support.node import NodeProcess

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("AISRV_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
CHROMIUM = Path(os.environ.get("AISRV_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TOKEN = "console-token-5be1"
WAIT_MS = 60_000

# A detector-shaped result: the tiny CNN's scores, plus two boxes placed from the
# image's size (so the test knows where they must be drawn).
BOXES_POST = textwrap.dedent('''\
    import numpy as np
    from PIL import Image


    def post_dataprocess(post_frame):
        scores = np.asarray(post_frame["infers"][0])
        best = int(scores.argmax())
        with Image.open(post_frame["passby"]["path"]) as image:
            w, h = image.size
        return {"label": post_frame["labels"][best], "scores": scores.tolist(),
                "objects": [
                    {"label": "left", "score": 0.9, "box": [w // 8, h // 4, w // 2, h * 3 // 4]},
                    {"label": "right", "score": 0.6, "box": [w * 5 // 8, h // 8, w - 4, h // 2]}]}
''')


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    write_bundle(root / "storage", name="boxer", seed=2, post=BOXES_POST,
                 modelext={"input": "image"})
    write_bundle(root / "storage", name="spare", seed=3)
    node = NodeProcess(root / "storage", env={"AISRV_AUTH_TOKEN": TOKEN}).start()
    answer = node.post("/api/v1alpha/switch", {"btype": "pytorch", "model": "boxer"},
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    node.image = root / "grey.png"
    Image.new("RGB", (160, 120), (128, 128, 128)).save(node.image, "PNG")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), (f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's "
                               "chromium package for the tests (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.problems = []  # what the browser logged at error level, and uncaught exceptions
    page.on("console", lambda msg: msg.type in ("error", "assert") and page.problems.append(
        f"console {msg.type}: {msg.text} ({msg.location})"))
    page.on("pageerror", lambda exc: page.problems.append(f"page error: {exc}"))
    yield page
    context.close()


def test_the_page_is_open_and_its_calls_need_the_token(node):
    served = requests.get(node.base + "/console", timeout=10)
    assert served.status_code == 200 and "text/html" in served.headers["Content-Type"]
    assert 'data-auth="token"' in served.text
    assert "default-src 'none'" in served.headers["Content-Security-Policy"]
    for name, kind in (("console.js", "javascript"), ("console.css", "text/css")):
        got = requests.get(f"{node.base}/console/{name}", timeout=10)
        assert got.status_code == 200 and kind in got.headers["Content-Type"], name
    for name in ("nothing.js", "..%2f..%2fsettings.py", "%2e%2e", "index.htm"):
        assert requests.get(f"{node.base}/console/{name}", timeout=10).status_code == 404, name
    state = requests.get(node.base + "/console/api/state", timeout=10)
    assert state.status_code == 401 and state.json()["status"] == "failed"
    unload = requests.post(node.base + "/console/api/unload", json={"bid": "0"}, timeout=10)
    assert unload.status_code == 401
    bad = requests.post(node.base + "/console/api/detect", json={"base64": "not base64!"},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert bad.status_code == 400 and "base64" in bad.json()["message"]
    unknown = requests.post(node.base + "/console/api/unload", json={"bid": "77"},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert unknown.status_code == 404 and "77" in unknown.json()["message"]


def test_the_console_shows_the_model_runs_an_image_and_draws_its_boxes(node, page):
    page.goto(node.base + "/console")
    page.wait_for_selector("#banner:has-text('asks for a token')")
    page.fill("#token", TOKEN)
    page.click("#token-save")

    row = page.locator("#backends tbody tr", has_text="boxer")
    row.wait_for()
    row.locator("td.state", has_text="running").wait_for()  # once the model serves
    assert row.locator("td").first.inner_text() == "0"
    assert "0: running" in row.inner_text()
    stored = page.locator("#models tbody tr", has_text="boxer")
    assert stored.locator("td").nth(5).inner_text() == "0"  # loaded on backend 0
    facts = page.locator("#node-facts").inner_text()
    assert "1.0.0" in facts and "CPU" in facts and "running" in facts

    page.wait_for_function("document.querySelector('#test-bid').value === '0'")
    page.set_input_files("#test-file", str(node.image))
    page.click("#test-run")
    page.wait_for_selector("#test-boxes:has-text('2 boxes drawn')")
    result = page.locator("#test-result").inner_text()
    assert '"objects"' in result and '"left"' in result and '"label"' in result
    assert page.locator("#test-canvas").get_attribute("data-boxes") == "2"
    # The image's own grey inside the boxes, the boxes' colours on their left edges
    # (box 1: x = 160 // 8 = 20, y from 30 to 90; box 2: x = 100, y from 15 to 60).
    pixels = page.evaluate("""() => {
        const ctx = document.getElementById('test-canvas').getContext('2d');
        const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
        return {size: [ctx.canvas.width, ctx.canvas.height], inside: at(50, 60),
                left: at(20, 60), right: at(100, 40)};
    }""")
    assert pixels["size"] == [160, 120]
    assert pixels["inside"] == [128, 128, 128]
    assert pixels["left"] == [255, 23, 68]  # the first colour of the palette
    assert pixels["right"] == [0, 176, 255]
    # The request shows up in the latency column once the page polls /metrics again.
    row.locator("td.latency", has_text="req").wait_for()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.problems == []


def test_the_console_loads_and_unloads_a_model(node, page):
    page.goto(node.base + "/console")
    page.fill("#token", TOKEN)
    page.click("#token-save")
    page.locator("#models tbody tr", has_text="spare").get_by_role("button", name="Load").click()
    spare = page.locator("#backends tbody tr", has_text="spare")
    spare.locator("td.state", has_text="running").wait_for()
    bid = spare.locator("td").first.inner_text()
    assert bid != "0"
    spare.get_by_role("button", name="Unload").click()
    page.wait_for_selector(f"#notice:has-text('Backend {bid} unloaded')")
    spare.wait_for(state="detached")
    assert page.locator("#backends tbody tr", has_text="boxer").count() == 1
    assert page.problems == []
