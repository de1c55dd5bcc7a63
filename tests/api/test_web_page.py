"""The web page at ``GET /``, driven in headless Chromium against the real stack: a real
``internvl-queue api`` (gunicorn + the front), a real Redis, a real worker on the tiny model.

- A person on a phone-sized screen chooses ``examples/cat.jpg``, asks, and reads the answer the
  tiny model's reference gives, with its timings and token usage; every read of the job is a
  long poll; the page fits the screen; nothing it loads is refused by its own CSP.
- An image over ``INTERNVL_MAX_REQUEST_BYTES``, dropped onto the page, shows the API's words.
- With ``INTERNVL_AUTH=required``: the page and its files need no key, ``/v1/`` still does; a
  wrong key shows the API's words; the right key queues the job, whose place in line is shown,
  and Cancel cancels it.

Chromium is Debian's (``apt-get install chromium``; ``scripts/setup.sh test`` installs it),
driven by ``playwright``. Without either the tests skip locally and fail under CI.
``INTERNVL_WEB_PAGE_SCREENSHOT=docs/web-page.png`` also saves the answer's screenshot there (the
documentation's picture).
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from PIL import Image

from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.settings import Settings
from tests.api.api_process import ApiProcess
from tests.conftest import IN_CI, WorkerProcess
from tests.worker.reference import reference_answer

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the test extra is not installed
    sync_playwright = None  # type: ignore[assignment]

CAT = Path(__file__).resolve().parents[2] / "examples" / "cat.jpg"
QUESTION = "What animal is in the picture?"
MAX_NEW_TOKENS = 12
# Small enough for a test image to pass it, large enough for the cat and its form.
MAX_REQUEST_BYTES = 64 * 1024
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1024, "height": 800}
ANSWER_TIMEOUT_MS = 120_000


def _chromium() -> str:
    """Debian's Chromium, or a skip (locally) or a failure (CI) that says how to get it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    missing = []
    if sync_playwright is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if path is None:
        missing.append("Chromium (apt-get install chromium, or scripts/setup.sh test)")
    if missing:
        why = f"the web page tests need {' and '.join(missing)}"
        if IN_CI:
            pytest.fail(f"{why}: under CI they must run, not skip")
        pytest.skip(why)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    # Chromium's sandbox cannot start as root (a CI container); elsewhere it stays on.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=args)
        yield launched
        launched.close()


class Watched:
    """A page and what it did: console errors, uncaught exceptions, requests for the job."""

    def __init__(self, browser: Browser, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self.job_reads: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.exceptions.append(str(exc)))
        self.page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def _request(self, request: Any) -> None:
        if request.method == "GET" and re.search(r"/v1/jobs/[^/]+", request.url):
            self.job_reads.append(request.url)

    def assert_nothing_refused(self) -> None:
        """No script error, and nothing refused by the page's CSP (it would log an error)."""
        assert self.exceptions == []
        assert [m for m in self.console if "Content Security Policy" in m] == [], self.console

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[list[Watched]]:
    """Pages opened by the test, closed after it."""
    opened: list[Watched] = []
    yield opened
    for page in opened:
        page.close()


def open_page(opened: list[Watched], browser: Browser, url: str, viewport: dict[str, int]) -> Page:
    watched = Watched(browser, viewport)
    opened.append(watched)
    watched.page.goto(url)
    # The script ran once the service line changed (it asks /readyz when the page opens).
    # (Waits use locators: wait_for_function evaluates strings, which the page's CSP forbids.)
    expect(watched.page.locator("#service")).not_to_have_text("Checking the service…")
    return watched.page


def noise_png(width: int, height: int, seed: int) -> bytes:
    """A PNG that does not compress: about 3 bytes per pixel."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drop_file(page: Page, name: str, data: bytes, mime: str) -> None:
    """Drop a file onto the page's drop zone as a person dragging it from their files would."""
    transfer = page.evaluate_handle(
        """([name, bytes, mime]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            return transfer;
        }""",
        [name, list(data), mime],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def shown_error(page: Page) -> str:
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error")


@pytest.fixture
def open_api(settings: Settings, worker: WorkerProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    """A real API, open, sending its jobs to the shared worker, with a small body limit."""
    process = ApiProcess(
        settings.redis_url,
        tmp_path / "api.log",
        INTERNVL_QUEUE=settings.queue_name,
        INTERNVL_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_a_person_on_a_phone_asks_about_the_cat_and_reads_the_answer(
    browser: Browser,
    watched: list[Watched],
    open_api: ApiProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    page = open_page(watched, browser, f"{open_api.url}/", PHONE)
    assert "No API key is needed." in page.inner_text("#service")
    page.set_input_files("#images", CAT)
    page.fill("#question", QUESTION)
    page.click("#options summary")
    page.fill("#max_new_tokens", str(MAX_NEW_TOKENS))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=ANSWER_TIMEOUT_MS)

    expected, tiles = reference_answer(
        tiny_model_dir, [CAT.read_bytes()], QUESTION, max_new_tokens=MAX_NEW_TOKENS, max_tiles=12
    )
    assert expected  # the tiny model answers something, so the equality below means something
    assert page.text_content("#answer") == expected
    assert page.inner_text("#status") == "Done."
    job_id = page.inner_text("#job_id").removeprefix("Job ")
    job = requests.get(f"{open_api.url}/v1/jobs/{job_id}", timeout=10).json()
    result = job["result"]
    assert result["answer"] == expected and result["usage"]["image_tiles"] == tiles
    usage = page.inner_text("#usage")
    assert f"answer {result['usage']['completion_tokens']}" in usage
    assert f"prompt {result['usage']['prompt_tokens']}" in usage
    assert f"image tiles {tiles}" in usage
    timings = page.inner_text("#timings")
    for name in ("queued", "preprocess", "inference", "total"):
        assert f"{name} {result['timings_ms'][name]:.1f}" in timings
    assert page.is_hidden("#cancel")
    # Every read of the job was a long poll, none a plain poll.
    assert watched[0].job_reads and all("wait=5" in url for url in watched[0].job_reads)

    # Usable on the phone: everything a person touches is visible, nothing wider than the screen.
    for selector in ("#drop", "#question", "#api_key", "#submit", "#answer"):
        assert page.is_visible(selector), selector
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    # The styles applied (a CSP refusing them would leave a page without them).
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") == "672px"
    watched[0].assert_nothing_refused()

    page.screenshot(path=str(tmp_path / "web-page-answer.png"), full_page=True)
    if target := os.environ.get("INTERNVL_WEB_PAGE_SCREENSHOT"):
        page.screenshot(path=target, full_page=True)


def test_an_image_over_the_body_limit_shows_the_apis_words(
    browser: Browser, watched: list[Watched], open_api: ApiProcess, tmp_path: Path
) -> None:
    big = noise_png(160, 160, seed=1)
    # Over the limit, but under the 4 x limit the API reads before it answers (not a reset).
    assert MAX_REQUEST_BYTES < len(big) < 4 * MAX_REQUEST_BYTES
    refused = requests.post(
        f"{open_api.url}/v1/jobs",
        files={"image": ("big.png", big, "image/png")},
        data={"question": QUESTION},
        timeout=30,
    )
    assert refused.status_code == 413
    words = refused.json()["error"]["message"]
    assert str(MAX_REQUEST_BYTES) in words

    page = open_page(watched, browser, f"{open_api.url}/", DESKTOP)
    drop_file(page, "big.png", big, "image/png")
    assert "big.png" in page.inner_text("#chosen")
    page.fill("#question", QUESTION)
    page.click("#submit")
    assert shown_error(page) == words
    page.screenshot(path=str(tmp_path / "web-page-too-large.png"), full_page=True)
    watched[0].assert_nothing_refused()


@pytest.fixture
def keyed_api(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[ApiProcess]:
    """A real API with ``INTERNVL_AUTH=required``; no worker takes its jobs (they stay queued)."""
    process = ApiProcess(
        redis_url,
        tmp_path / "api.log",
        INTERNVL_AUTH="required",
        INTERNVL_QUEUE="internvl-web-page-no-worker",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_with_keys_required_a_wrong_key_is_told_and_the_right_one_queues_and_cancels(
    browser: Browser,
    watched: list[Watched],
    keyed_api: ApiProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    _, key = ApiKeyStore(redis_client).create("web page")
    url = keyed_api.url
    # The page and its files are open; the API behind them is not; other paths still answer JSON.
    for path in ("/", "/page/page.js", "/page/page.css"):
        reply = requests.get(f"{url}{path}", timeout=10)
        assert reply.status_code == 200, path
        assert "script-src 'self'" in reply.headers["Content-Security-Policy"]
    assert requests.get(f"{url}/", timeout=10).headers["Content-Type"].startswith("text/html")
    assert requests.get(f"{url}/v1/jobs/x", timeout=10).status_code == 401
    # (%2e%2e: a client that does not resolve dots itself asks for the package's source.)
    for path in ("/nope", "/page/nope.js", "/page/%2e%2e/web_page.py", "/page/%2e%2e%2fapp.py"):
        missing = requests.get(f"{url}{path}", timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"

    page = open_page(watched, browser, f"{url}/", DESKTOP)
    assert "An API key is required." in page.inner_text("#service")
    page.set_input_files("#images", CAT)
    page.fill("#question", QUESTION)
    wrong = "iq_000000000000_" + "x" * 32
    page.fill("#api_key", wrong)
    page.click("#submit")
    words = requests.post(
        f"{url}/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}, timeout=10
    ).json()["error"]["message"]
    assert shown_error(page) == words
    page.screenshot(path=str(tmp_path / "web-page-wrong-key.png"), full_page=True)

    page.fill("#api_key", key)
    # The key is kept for this tab only (sessionStorage), never in localStorage or a cookie.
    assert page.evaluate("sessionStorage.getItem('internvl-queue.api_key')") == key
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    page.click("#submit")
    expect(page.locator("#status")).to_have_text(re.compile("^Queued"))
    assert page.inner_text("#status") == "Queued: number 1 in line."
    assert page.is_hidden("#error")
    job_id = page.inner_text("#job_id").removeprefix("Job ")
    # The job belongs to the key it was sent with: emptying the field later changes nothing.
    page.fill("#api_key", "")
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("Canceled.")
    job = requests.get(
        f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).json()
    assert job["status"] == "canceled"
    assert page.inner_text("#error") == job["error"]["message"]
    assert page.is_hidden("#cancel")
    watched[0].assert_nothing_refused()
