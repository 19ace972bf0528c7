"""New run: the form is the schema (help, defaults, sections), checked by the CLI's
validator with each problem beside its field, the command and YAML follow the form, the
draft survives a reload, and launching queues a job of any task."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.studio.conftest import StudioClient


def _form(html: str) -> dict[str, str]:
    """The values of the form as the browser would send them."""
    values = dict(re.findall(r'<input type="text" name="([^"]+)" id="[^"]+" value="([^"]*)"',
                             html))
    for name, body in re.findall(r'<select name="([^"]+)" id="i-[^"]+">(.*?)</select>', html,
                                 re.S):
        chosen = re.search(r'<option value="([^"]*)" selected>', body)
        values[name] = chosen.group(1) if chosen else ""
    for name, body in re.findall(r'<textarea name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        values[name] = body
    start = re.search(r'name="_start" value="([^"]*)"', html)
    values["_start"] = start.group(1) if start else ""
    return {k: v.replace("&#39;", "'").replace("&quot;", '"') for k, v in values.items()}


def _field(html: str, path: str) -> str:
    """The problems shown beside a field (in the page, or as an out-of-band swap)."""
    fid = path.replace(".", "--")
    return html.split(f'id="pr-{fid}"', 1)[1].split("</div>\n", 1)[0]


def test_form_is_generated_from_the_schema(studio: StudioClient) -> None:
    from tunesmith.config.schema import TrainConfig

    html = studio.get("/studio/new").text
    lr = html.split('id="f-train--lr"', 1)[1].split('<div class="field', 1)[0]
    assert TrainConfig.model_fields["lr"].description in lr
    assert f"default: <code>{TrainConfig.model_fields['lr'].default}" in lr
    assert 'data-section="classification"' in html and 'data-section="dpo"' in html
    assert "<details class=\"section\" data-section=\"dpo\">" in html  # folded
    assert "configs/sft/lora.yaml" in html  # shipped configs to start from


def test_every_problem_is_shown_beside_its_field_at_once(studio: StudioClient,
                                                         tmp_path: Path) -> None:
    values = _form(studio.get("/studio/new").text)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    values.update({"train.lr": "-1", "train.batch_size": "lots", "data.train": str(data),
                   "method.type": "lorax"})
    html = studio.post("/studio/new/check", data=values).text
    assert "train.lr (got -1): Input should be greater than 0" in _field(html, "train.lr")
    assert "unable to parse string as an integer" in _field(html, "train.batch_size")
    assert "must be one of" in _field(html, "method.type")
    assert "3 problem(s)" in html
    assert 'id="launch"' in html and "disabled" in html.split('id="launch"')[1].split(">")[0]
    # the command is the form: the start plus the changed fields as overrides
    cmd = re.search(r'id="command">(.*?)<', html, re.S).group(1)
    assert cmd.startswith("tunesmith train CONFIG.yaml") and "train.lr=-1" in cmd


def test_fixing_the_value_gives_yaml_and_command_then_launch(studio: StudioClient,
                                                             tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    values = _form(studio.get("/studio/new").text)
    values.update({"name": "my-run", "data.train": str(data), "train.lr": "-1"})
    assert "Input should be greater than 0" in studio.post("/studio/new/check", data=values).text
    values["train.lr"] = "3e-4"
    html = studio.post("/studio/new/check", data=values).text
    assert "✓ valid" in html and "lr: 0.0003" in html
    assert "train.lr=3e-4" in html and "name=my-run" in html
    # the draft is on the server: a reload (or another tab) shows the same form
    again = studio.get("/studio/new").text
    assert _form(again)["train.lr"] == "3e-4" and _form(again)["name"] == "my-run"
    resp = studio.post("/studio/new/launch", data=values)
    job_id = resp.headers["HX-Redirect"].rsplit("/", 1)[1]
    job = studio.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["metadata"] == {"source": "studio",
                                                             "name": "my-run"}
    page = studio.get(f"/studio/runs/{job_id}").text
    assert "my-run" in page and "lr: 0.0003" in page


def test_launch_refuses_an_invalid_form_and_says_why(studio: StudioClient) -> None:
    values = _form(studio.get("/studio/new").text)
    values["train.epochs"] = "0"
    html = studio.post("/studio/new/launch", data=values).text
    assert "train.epochs (got 0)" in _field(html, "train.epochs")
    assert "data.train: no training data given" in _field(html, "data.train")


def test_start_from_a_shipped_config_or_an_earlier_run(studio: StudioClient,
                                                       runs_dir: Path) -> None:
    html = studio.get("/studio/new?start=configs/dpo/hh-lora.yaml").text
    assert _form(html)["task"] == "dpo" and 'data-section="dpo" open' in html
    from tests.studio.conftest import write_run

    write_run(runs_dir, "earlier", task="classification")
    html = studio.get("/studio/new?start=run:d0:earlier").text
    assert _form(html)["task"] == "classification"
    assert "runs/earlier/config.yaml" in html
    bad = studio.get("/studio/new?start=/etc/passwd")
    assert bad.status_code == 400 and "not one of the shipped configs" in bad.text


def test_classification_and_dpo_launch_as_jobs(studio: StudioClient, tmp_path: Path) -> None:
    cls = tmp_path / "cls.jsonl"
    cls.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n"
                           for i in range(4)))
    for task in ("classification", "dpo"):
        values = _form(studio.get("/studio/new?start=").text)
        values.update({"task": task, "data.train": str(cls), "name": f"t-{task}"})
        resp = studio.post("/studio/new/launch", data=values)
        job_id = resp.headers["HX-Redirect"].rsplit("/", 1)[1]
        job = studio.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        assert job["method"]["type"] == ("dpo" if task == "dpo" else "classification")


def test_a_new_run_from_a_job_gets_its_name_back(studio: StudioClient, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    values = _form(studio.get("/studio/new?start=").text)
    values.update({"name": "first-try", "data.train": str(data)})
    job_id = studio.post("/studio/new/launch", data=values).headers["HX-Redirect"].rsplit(
        "/", 1)[1]
    run = Path(studio.client.app.state.settings.data_dir) / "jobs" / job_id
    run.mkdir(parents=True)
    import yaml

    from tunesmith.config.load import validate_dict

    (run / "config.yaml").write_text(yaml.safe_dump(validate_dict(
        {"name": job_id, "data": {"train": str(data)}, "output": {"dir": str(run.parent)}}
    ).model_dump(mode="json")))
    html = studio.get(f"/studio/new?start=run:{job_id}").text
    assert _form(html)["name"] == "first-try" and _form(html)["output.dir"] == "runs"
    command = re.search(r'id="command">(.*?)<', html, re.S).group(1)
    assert "name=first-try" in command and "output.dir=runs" in command, command
