"""Datasets: upload (malformed files refused with the CLI's message), inspect, the
trained-token preview with its checks, prepare with the data card, hand-off to New run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.studio.conftest import StudioClient


def _chat_rows(n: int = 12) -> str:
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Say {w}."},
        {"role": "assistant", "content": w}]}) + "\n"
        for w in (["hello", "yes", "no", "red"] * n)[:n])


def _upload(studio: StudioClient, name: str, text: str) -> object:
    return studio.post("/studio/data/upload", files={"file": (name, text.encode())})


def test_upload_then_inspect(studio: StudioClient) -> None:
    resp = _upload(studio, "chat.jsonl", _chat_rows())
    assert resp.headers["HX-Redirect"] == "/studio/data?path=chat.jsonl"
    html = studio.get("/studio/data?path=chat.jsonl").text
    assert "messages" in html and "<span class=\"k\">rows</span> 12" in html
    assert "tunesmith data inspect" in html
    assert "chat.jsonl" in studio.get("/studio/data").text


def test_malformed_upload_is_refused_with_the_clis_message(studio: StudioClient,
                                                          tmp_path: Path) -> None:
    resp = _upload(studio, "bad.jsonl", _chat_rows(2) + "{not json\n")
    assert resp.status_code == 200 and "HX-Redirect" not in resp.headers
    assert "Error:" in resp.text and "bad.jsonl:3" in resp.text  # what + where (the line)
    data_dir = Path(studio.client.app.state.settings.data_dir)
    assert not list((data_dir / "datasets").glob("bad*"))  # nothing half-kept
    wrong = _upload(studio, "notes.txt", "hello")
    assert "unsupported file type" in wrong.text and "fix" in wrong.text


def test_server_path_that_does_not_exist_is_explained(studio: StudioClient) -> None:
    html = studio.get("/studio/data?path=nowhere/train.jsonl").text
    assert "file not found" in html and "nowhere/train.jsonl" in html


def test_preview_highlights_trained_tokens_and_runs_the_checks(studio: StudioClient,
                                                              tiny_model: Path) -> None:
    _upload(studio, "chat.jsonl", _chat_rows())
    html = studio.post("/studio/data/preview", data={
        "path": "chat.jsonl", "model": str(tiny_model), "max_length": "128"}).text
    assert '<span class="t">' in html and '<span class="m">' in html
    trained = html.split('<span class="t">', 1)[1].split("</span>", 1)[0]
    assert "hello" in trained  # the assistant's reply is what trains
    assert "ok" in html and "template / label-mask check" in html
    assert "tunesmith data preview" in html and f"model.name={tiny_model}" in html
    bad = studio.post("/studio/data/preview", data={"path": "chat.jsonl",
                                                    "model": "no-such-model"}).text
    assert "Error:" in bad and "no-such-model" in bad


def test_prepare_writes_splits_and_shows_the_card(studio: StudioClient) -> None:
    rows = "".join(json.dumps({"text": f"text number {i} about things", "label": i % 2}) + "\n"
                   for i in range(40))
    _upload(studio, "cls.jsonl", rows)
    html = studio.post("/studio/data/prepare", data={
        "path": "cls.jsonl", "train": "0.8", "validation": "0.1", "test": "0.1",
        "near_dedup": "false"}).text
    assert "Prepared" in html and "splits" in html and "tunesmith data prepare" in html
    out = Path(studio.client.app.state.settings.data_dir) / "datasets/prepared/cls"
    assert (out / "train.jsonl").is_file()
    bad = studio.post("/studio/data/prepare", data={"path": "cls.jsonl", "train": "x"}).text
    assert "split ratios must be numbers" in bad


def test_use_for_a_new_run_fills_the_draft(studio: StudioClient) -> None:
    _upload(studio, "chat.jsonl", _chat_rows())
    resp = studio.post("/studio/data/use", data={"path": "chat.jsonl", "model": "m1"})
    assert resp.headers["HX-Redirect"] == "/studio/new"
    html = studio.get("/studio/new").text
    assert "datasets/chat.jsonl" in html and 'value="m1"' in html
