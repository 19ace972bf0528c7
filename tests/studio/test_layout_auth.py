"""The studio's shell: pages render offline (every asset served by the app), the API key is
asked for once (signed HttpOnly cookie), and state-changing requests need the CSRF token."""

from __future__ import annotations

import re
from pathlib import Path

from tests.studio.conftest import StudioClient, make_studio

SCREENS = ("/studio/runs", "/studio/new", "/studio/data", "/studio/eval", "/studio/play",
           "/studio/models")


def test_every_asset_is_served_by_the_app_itself(studio: StudioClient) -> None:
    html = studio.get("/studio/runs").text
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assets = [r for r in refs if r.endswith((".js", ".css"))]
    assert assets and all(r.startswith("/studio/static/") for r in assets), assets
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)  # nothing from the network
    for ref in assets:
        assert studio.get(ref).status_code == 200, ref
    vendor = Path(__file__).parents[2] / "src/tunesmith/studio/static/vendor"
    for lib in vendor.iterdir():
        assert (lib / "LICENSE").is_file(), lib


def test_root_redirects_and_unknown_page_is_a_page(studio: StudioClient) -> None:
    resp = studio.get("/studio", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/studio/runs"
    resp = studio.get("/studio/nope")
    assert resp.status_code == 404 and "there is no studio page at this address" in resp.text
    assert "<html" in resp.text


def test_api_key_is_asked_once_then_a_signed_cookie(tmp_path: Path, runs_dir: Path) -> None:
    with make_studio(tmp_path / "data", runs_dir, api_key="sekrit") as client:
        resp = client.get("/studio/runs", follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"].startswith("/studio/login?next=")
        assert client.get("/v1/models").status_code == 401  # the API still needs the key
        bad = client.post("/studio/login", data={"key": "wrong", "next": "/studio/runs"})
        assert bad.status_code == 401 and "not this server&#39;s API key" in bad.text
        ok = client.post("/studio/login", data={"key": "sekrit", "next": "/studio/runs"},
                         follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/studio/runs"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/studio/runs").status_code == 200
        # the cookie stands in for the key on the API too (the playground uses /v1)
        assert client.get("/v1/models").status_code == 200
        client.cookies.clear()
        client.cookies.set("tunesmith_studio", "forged.value")
        assert client.get("/studio/runs", follow_redirects=False).status_code == 303
    # another key ends the session
    with make_studio(tmp_path / "data", runs_dir, api_key="other") as client:
        client.cookies.set("tunesmith_studio", cookie.split(";")[0].split("=", 1)[1])
        assert client.get("/studio/runs", follow_redirects=False).status_code == 303


def test_login_never_redirects_off_site(tmp_path: Path, runs_dir: Path) -> None:
    with make_studio(tmp_path / "data", runs_dir, api_key="k") as client:
        ok = client.post("/studio/login", data={"key": "k", "next": "https://evil.example/"},
                         follow_redirects=False)
        assert ok.headers["location"] == "/studio/runs"


def test_state_changing_requests_need_the_csrf_token(studio: StudioClient) -> None:
    studio.get("/studio/runs")
    assert studio.post("/studio/runs/ftjob-x/cancel", csrf=False).status_code == 403
    refused = studio.post("/studio/runs/ftjob-x/cancel",
                          headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    # with the token the request reaches the route (which says the job does not exist)
    resp = studio.post("/studio/runs/ftjob-x/cancel")
    assert resp.status_code == 200 and "only a queued or running job can be cancelled" in resp.text


def test_a_cross_site_api_call_with_the_cookie_gets_no_key(tmp_path: Path,
                                                            runs_dir: Path) -> None:
    with make_studio(tmp_path / "data", runs_dir, api_key="k") as client:
        client.post("/studio/login", data={"key": "k", "next": "/studio/runs"})
        assert client.post("/v1/fine_tuning/jobs", json={}).status_code == 401
        page = client.get("/studio/runs").text
        token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
        resp = client.post("/v1/fine_tuning/jobs", json={}, headers={"X-CSRF-Token": token})
        assert resp.status_code == 400  # through the guard; the jobs API checks the body


def test_studio_pages_are_not_recorded_as_api_requests(studio: StudioClient) -> None:
    from sqlalchemy import select

    from tunesmith.serve.ops.monitoring import RequestRecord

    studio.get("/studio/runs")
    studio.get("/studio/runs/table")
    studio.client.get("/v1/models")
    with studio.client.app.state.db.session() as s:
        endpoints = [r.endpoint for r in s.scalars(select(RequestRecord))]
    assert endpoints == ["/v1/models"]


def test_studio_bodies_are_bounded(tmp_path: Path, runs_dir: Path) -> None:
    with make_studio(tmp_path / "data", runs_dir, max_body_bytes=1000,
                     max_upload_bytes=5000) as client:
        studio = StudioClient(client)
        big = studio.post("/studio/new/check", data={"name": "x" * 2000})
        assert big.status_code == 413
        ok = studio.post("/studio/data/upload",
                         files={"file": ("a.jsonl", b'{"text": "' + b"y" * 2000 + b'"}\n')})
        assert ok.status_code == 200 and ok.headers.get("HX-Redirect")
        too_big = studio.post("/studio/data/upload",
                              files={"file": ("b.jsonl", b'{"text": "' + b"y" * 6000 + b'"}\n')})
        assert too_big.status_code == 413
