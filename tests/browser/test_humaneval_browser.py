"""Human evaluation in a real browser (Debian's headless Chromium driven by Playwright):
three ratings and three labels made with the keyboard, the page reloaded mid-way, and all
six found in the exports (DPO rows and the new dataset version).

Skips (with the reason) where /usr/bin/chromium or Playwright is missing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.studio_server import StudioProcess
from tests.browser.test_studio_browser import _browser_or_skip
from tests.helpers.tiny import write_jsonl
from tunesmith.humaneval import campaigns, queues
from tunesmith.humaneval.answers import Answers
from tunesmith.serve.db import Database, default_url

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu"]


@pytest.fixture()
def studio(tmp_path: Path) -> Iterator[StudioProcess]:
    data = tmp_path / "data"
    db = Database(default_url(data))
    try:
        campaigns.create_campaign(db, "ab", Answers(
            [[{"role": "user", "content": f"Question {i}?"}] for i in range(3)],
            {m: [f"{m} answer {i}" for i in range(3)] for m in ("base", "tuned")},
            {"base": "base", "tuned": "tuned"}, {"prompts": "p.jsonl"}))
        src = write_jsonl(tmp_path / "u.jsonl", [{"text": f"row {i}"} for i in range(3)])
        queues.create_queue(db, "u", queues.from_file(src), labels=["good", "bad"])
    finally:
        db.dispose()
    (tmp_path / "runs").mkdir()
    server = StudioProcess(["--runs", str(tmp_path / "runs")], data, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _press(page, key: str, done: int) -> None:
    """Press a shortcut and wait until the server's answer (the next item) is on screen."""
    page.keyboard.press(key)
    page.wait_for_selector(f"#mine:text-is('{done}')")


def test_three_ratings_and_three_labels_with_the_keyboard(studio: StudioProcess,
                                                          tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    base = studio.base
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(30_000)

        page.goto(base + "/studio/review/campaign/ab?as=bea")
        page.wait_for_selector("#answer-a")
        shown = []
        for n, key in enumerate(("1", "2", "1"), start=1):
            a = page.inner_text("#answer-a")
            b = page.inner_text("#answer-b")
            shown.append(a if key == "1" else b)
            _press(page, key, n)
            if n == 2:  # reload mid-way: nothing lost, the next item is still there
                page.reload()
                page.wait_for_selector("#mine:text-is('2')")
        page.wait_for_selector("#done")

        page.goto(base + "/studio/review/queue/u?as=bea")
        page.wait_for_selector("#row-text")
        for n, key in enumerate(("1", "2", "1"), start=1):
            _press(page, key, n)
            if n == 1:
                page.reload()
                page.wait_for_selector("#mine:text-is('1')")
        page.wait_for_selector("#done")

        dpo = page.request.get(base + "/studio/humaneval/ab/export.jsonl?format=dpo").text()
        page.goto(base + "/studio/annotate/u")
        page.click("#export-version")
        page.wait_for_selector("#export-done")
        browser.close()

    rows = [json.loads(x) for x in dpo.splitlines()]
    assert sorted(r["chosen"][0]["content"] for r in rows) == sorted(shown)
    assert all(r["provenance"]["ratings"][0]["reviewer"] == "bea" for r in rows)
    version = studio.data_dir / "annotations" / "u" / "v1.jsonl"
    labelled = [json.loads(x) for x in version.read_text().splitlines()]
    assert [r["label"] for r in labelled] == ["good", "bad", "good"]
    assert all(r["provenance"]["annotations"][0]["annotator"] == "bea" for r in labelled)
