"""The studio in a real browser (Debian's headless Chromium driven by Playwright): upload a
dataset, see its trained tokens highlighted, fix an invalid config value shown beside its
field, launch a tiny run, watch its loss curve gain points live, restart the server and find
the run and its curve intact, chat with two models side by side.

Skips (with the reason) where /usr/bin/chromium or Playwright is missing. With
``TUNESMITH_SCREENSHOTS=docs/images/studio`` it writes the screenshots of docs/studio.md.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.studio_server import StudioProcess

CHROMIUM = os.environ.get("TUNESMITH_CHROMIUM", "/usr/bin/chromium")
WORDS = ["hello", "yes", "no", "maybe", "red", "blue", "green", "stop"]


def _browser_or_skip() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install 'tunesmith[browser]')")
    return sync_playwright


def _model(out: Path) -> Path:
    """A small Llama (bigger than the unit tests' so a step takes long enough to watch)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def studio(tmp_path: Path) -> Iterator[StudioProcess]:
    from tests.unit.serve.serve_support import make_lora_run

    base = _model(tmp_path / "base")
    lora = make_lora_run(base, tmp_path / "runs" / "lora-b", seed=2)
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."},
                          {"role": "assistant", "content": w}]} for w in WORDS * 4]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = StudioProcess(["--runs", str(tmp_path / "runs"), "--model", f"tiny-a={base}",
                            "--model", f"tiny-b={lora}"], tmp_path / "data", tmp_path)
    server.start()
    server.base_model = base  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def _shot(page: Any, name: str) -> None:
    folder = os.environ.get("TUNESMITH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


def _set(page: Any, path: str, value: str) -> None:
    """Type into a New-run field and wait for the server's check of the form."""
    fid = path.replace(".", "--")
    with page.expect_response(lambda r: r.url.endswith("/studio/new/check")):
        page.fill(f"#i-{fid}", value)
        page.dispatch_event(f"#i-{fid}", "change")
    page.wait_for_timeout(50)


def test_studio_end_to_end(studio: StudioProcess, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import Error as PlaywrightError
    base = studio.base
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(60_000)

        # 1. upload a dataset, see the trained tokens highlighted and the checks
        page.goto(base + "/studio/data")
        page.set_input_files("#upload-file", str(tmp_path / "chat.jsonl"))
        page.click("#upload-button")
        page.wait_for_url("**/studio/data?path=chat.jsonl")
        assert "32" in page.inner_text(".stats")
        page.fill("#preview-model", str(studio.base_model))  # type: ignore[attr-defined]
        page.click("#preview-button")
        page.wait_for_selector("#preview .tokens .t")
        trained = page.locator("#preview .tokens").first.locator(".t").all_inner_texts()
        assert any("hello" in t for t in trained), trained
        assert page.locator("#preview .check-ok").count() >= 3
        page.locator("#preview").scroll_into_view_if_needed()
        _shot(page, "datasets-preview")

        # 2. New run: an invalid value is shown beside its field; fixing it enables Launch
        page.click("#use-dataset")
        page.wait_for_url("**/studio/new")
        _set(page, "name", "browser-run")
        for path, value in (("train.max_steps", "120"), ("train.batch_size", "8"),
                            ("data.max_length", "64"), ("train.save_every", "40")):
            _set(page, path, value)
        _set(page, "train.lr", "-1")
        problem = page.locator("#pr-train--lr .problem")
        assert "greater than 0" in problem.inner_text()
        assert page.locator("#launch").is_disabled()
        page.locator("#f-train--lr").scroll_into_view_if_needed()
        page.evaluate("window.scrollBy(0, -120)")  # below the sticky navigation bar
        _shot(page, "new-run-invalid")
        _set(page, "train.lr", "0.003")
        assert page.locator("#pr-train--lr .problem").count() == 0
        assert "train.lr=0.003" in page.inner_text("#command")
        assert page.locator("#launch").is_enabled()

        # 3. launch; the run page's loss curve gains points without a reload
        page.click("#launch")
        page.wait_for_url("**/studio/runs/ftjob-*")
        run_url = page.url
        loss = page.locator('figure[data-metric="loss"]')
        seen: list[int] = []
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                n = int(loss.get_attribute("data-points") or 0)
                if not seen or n != seen[-1]:
                    seen.append(n)
                if "succeeded" in page.inner_text("#run-status"):
                    break
            except PlaywrightError:  # the page reloads itself once the job has finished
                pass
            page.wait_for_timeout(100)
        page.wait_for_timeout(1000)
        page.wait_for_load_state("load")
        assert "succeeded" in page.inner_text("#run-status"), page.content()[-2000:]
        final = int(loss.get_attribute("data-points") or 0)
        assert final == 120
        live = [n for n in seen if 0 < n < final]
        assert len(live) >= 2, seen  # points arrived while training ran, page not reloaded
        _shot(page, "run-live-curves")

        # 4. restart the server: the run and its whole curve are still there
        studio.restart()
        page.goto(base + "/studio/runs")
        assert "browser-run" in page.inner_text("#runs-table")
        page.goto(run_url)
        assert "succeeded" in page.inner_text("#run-status")
        assert int(page.locator('figure[data-metric="loss"]').get_attribute("data-points")) \
            == final

        # 5. two models side by side, streamed
        page.goto(base + "/studio/play")
        page.fill("#model-a", "tiny-a")
        page.fill("#model-b", "tiny-b")
        page.fill("#play-max-tokens", "8")
        page.fill("#play-prompt", "Say hello.")
        page.click("#play-send")
        page.wait_for_function("document.body.dataset.playDone === '1'")
        for side in ("a", "b"):
            answer = page.locator(f"#transcript-{side} .msg.assistant").last
            assert answer.inner_text().strip(), side
            assert "Error" not in answer.inner_text(), answer.inner_text()
        assert "curl" in page.inner_text("#play-cmd")
        _shot(page, "playground-side-by-side")
        page.reload()  # the conversation is on the server
        assert page.locator("#transcript-a .msg.assistant").count() == 1

        page.goto(base + "/studio/runs")
        _shot(page, "runs-list")
        browser.close()
    shutil.rmtree(tmp_path / "data" / "jobs", ignore_errors=True)
