"""Reports: sections present, self-contained HTML, training curves, headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tunesmith.evaluate.report import Report, Section, render_html, render_markdown

CHROMIUM = Path("/usr/bin/chromium")
EVAL_SECTIONS = ("summary", "training-curves", "metrics", "cost", "comparison",
                 "confusion-matrix", "worst-examples")


@pytest.fixture(scope="module")
def classifier_run_eval(tmp_path_factory: pytest.TempPathFactory, tiny_classifier_dir: Path
                        ) -> Path:
    """A fake training run (manifest, metrics.jsonl, final/) evaluated against its base."""
    from tunesmith.evaluate.runner import run_eval
    from tunesmith.evaluate.tasks import EvalSettings

    tmp = tmp_path_factory.mktemp("run-eval")
    run = tmp / "runs" / "sentiment"
    shutil.copytree(tiny_classifier_dir, run / "final")
    (run / "manifest.json").write_text(json.dumps({"name": "sentiment"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": s, "loss": 1 / s, "lr": 1e-3} for s in range(1, 11)] + [
        {"step": 5, "val_loss": 0.4, "val_accuracy": 0.7},
        {"step": 10, "val_loss": 0.3, "val_accuracy": 0.8}]))
    rows = [{"text": f"he said {w} <b>&amp;</b>", "label": ["negative", "positive"][i % 2]}
            for i, w in enumerate(["hello", "yes", "no", "maybe", "red", "blue"] * 2)]
    data = write_jsonl(tmp / "test.jsonl", rows)
    run_eval([str(tiny_classifier_dir), str(run)], str(data), tmp / "eval",
             EvalSettings(bootstrap=50, dtype="float32"))
    return tmp / "eval"


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z-]+)"', html)


def test_eval_report_has_its_sections_and_is_self_contained(classifier_run_eval: Path) -> None:
    html = (classifier_run_eval / "report.html").read_text(encoding="utf-8")
    assert _sections(html) == list(EVAL_SECTIONS)
    # no external resource: every src is a data: URI, every href an anchor
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]+)"', html))
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]+)"', html))
    assert "<script" not in html and "http://" not in html and "https://" not in html
    import matplotlib.image as mpimg

    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 3  # training curves + one confusion matrix per model
    for b64 in pngs:
        assert mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png").shape[0] > 50
    assert "&lt;b&gt;&amp;amp;" in html  # user text is escaped
    md = (classifier_run_eval / "report.md").read_text(encoding="utf-8")
    assert [h[3:] for h in md.splitlines() if h.startswith("## ")] == [
        "Summary", "Training curves", "Metrics", "Cost per example", "Comparison",
        "Confusion matrix", "Worst examples"]
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (classifier_run_eval / link).is_file()


def test_markdown_tables_escape_pipes_and_flag_rows() -> None:
    rep = Report("t")
    rep.add(Section("slices", "Slices").table(["a", "b"], [["x|y", 0.5], ["z", float("nan")]],
                                              flags=[False, True]))
    md = render_markdown(rep)
    assert "| x\\|y | 0.5 |" in md and "| z ⚑ | – |" in md
    assert 'class="flag"' in render_html(rep)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium is not installed at "
                    "/usr/bin/chromium (Debian/Ubuntu: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(classifier_run_eval: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
         f"--screenshot={shot}", "--dump-dom",
         (classifier_run_eval / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert _sections(dom) == list(EVAL_SECTIONS)
    for title in ("Training curves", "Metrics", "Comparison", "Confusion matrix"):
        assert f"<h2>{title}</h2>" in dom
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
