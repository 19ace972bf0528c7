"""New run → Check fit and time: `tunesmith plan` of the form's validated config runs as a
background studio task, the box polls it, then shows the verdict and the breakdown that the
plan wrote; an invalid form starts nothing."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tests.studio.conftest import StudioClient
from tests.studio.test_new_run import _form


def test_check_fit_and_time_runs_plan_and_shows_its_breakdown(
        studio: StudioClient, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Add {i} and 1.",
                                               "completion": f"{i + 1}"} for i in range(16)])
    values = _form(studio.get("/studio/new?start=").text)
    assert 'id="check-plan"' in studio.get("/studio/new").text
    values.update({"name": "fit", "model.name": str(tiny_model), "data.train": str(data),
                   "train.max_steps": "6", "train.batch_size": "4", "train.precision": "fp32",
                   "output.dir": str(tmp_path / "runs")})
    html = studio.post("/studio/new/plan", data=values).text
    task_id = re.search(r'hx-get="/studio/new/plan/([^"]+)"', html).group(1)
    assert "every 2s" in html and "tunesmith plan" in html
    deadline = time.time() + 300
    while 'id="plan-state"' in html and time.time() < deadline:
        time.sleep(1)
        html = studio.get(f"/studio/new/plan/{task_id}").text
    assert 'id="plan-result"' in html, html
    data_dir = Path(studio.client.app.state.settings.data_dir)
    plan = json.loads((data_dir / "studio" / "tasks" / task_id / "out" / "plan.json"
                       ).read_text())
    assert plan["fits"] and plan["total_steps"] == 6
    assert plan["verdict"] in html and plan["verdict"].startswith("fits with")
    table = html.split('id="plan-breakdown"', 1)[1].split("</table>", 1)[0]
    for part in ("weights", "gradients", "optimizer", "activations", "logits", "peak"):
        assert f"<td>{part}</td><td class=\"num\">{plan[part] / 2**30:.3f}</td>" in table
    assert f"{plan['total_steps']} steps" in html
    # the plan's config is the form's resolved config (the calibration ran the tiny model)
    config = next((data_dir / "studio" / "plan-configs").glob("*.yaml")).read_text()
    assert str(tiny_model) in config and "max_steps: 6" in config
    assert not (tmp_path / "runs" / "fit").exists()  # nothing was trained for real


def test_an_invalid_form_starts_no_plan(studio: StudioClient) -> None:
    values = _form(studio.get("/studio/new?start=").text)
    values["train.lr"] = "-1"
    html = studio.post("/studio/new/plan", data=values).text
    assert 'id="plan-problem"' in html and "fix the problems in the form first" in html
    data_dir = Path(studio.client.app.state.settings.data_dir)
    assert not (data_dir / "studio" / "tasks").exists()
    missing = studio.get("/studio/new/plan/plan-nope")
    assert missing.status_code == 400 and "no such plan check" in missing.text
