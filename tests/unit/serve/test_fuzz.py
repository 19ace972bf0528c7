"""Property-based fuzzing of every route: generated requests never get a 5xx.

Each route has a strategy that starts from a valid request and mutates it (a field set to an
out-of-range number, NaN or Infinity, a float for an integer, a wrong type, a very long or
unstorable string, nested junk; a field dropped; an unknown field added), or replaces it
with junk JSON, unparseable bytes or a junk multipart form. Every answer must be below 500,
a 4xx must be OpenAI's error object, a stream must carry no server error, and a valid request
right after must still succeed on the same client.

The default run is short and deterministic (``derandomize``); ``-m slow`` runs the large
variant (thousands of requests). With ``-s`` both print how many requests each route got.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.serve.jobs_support import chat_rows
from tests.unit.serve.serve_support import make_client, serve_models, shared_pool  # noqa: F401

DEFAULT_EXAMPLES = 200  # per route: 1,800 requests and their follow-ups, under a minute
LARGE_EXAMPLES = 1500  # per route, -m slow

# -- values ----------------------------------------------------------------------------------
EDGE_INTS = [0, -1, 1, 2, 3, 8, 9, 128, 129, 511, 4096, 4097, 2 ** 31 - 1, 2 ** 31, 2 ** 53 + 1,
             2 ** 63 - 1, 2 ** 63, -(2 ** 63), -(2 ** 63) - 1, 2 ** 64, 10 ** 30, -(10 ** 30)]
EDGE_FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e-45, 1e-9, 0.5, 1.0, 1.5, 2.0, 2.0000001, 100.5,
               1e308, -1e308, math.nan, math.inf, -math.inf]
WEIRD = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\ud83d\ude00", "\U0001f600", "\u202e",
         "\n", "NaN", "../../etc", "/etc", "/", ".", "~", "~nosuchuser/x", "a" * 201, "b" * 300,
         "c" * 5000, "tiny", "lora-a", "lora-b", "sentiment", "ft:tiny:x:12345678",
         "smollm2-135m-instruct", "minilm-l6", "owner/name", "owner/name:split", "file-",
         "ftjob-", "{{7*7}}", "%s%n", "<allowed>", "<file>", "<job>", "<completion>"]
strings = st.one_of(st.sampled_from(WEIRD),
                    st.text(st.characters(exclude_categories=()), max_size=24))
numbers = st.one_of(st.sampled_from(EDGE_INTS + EDGE_FLOATS), st.integers(), st.floats())
leaf = st.one_of(st.none(), st.booleans(), numbers, strings)
junk = st.recursive(leaf, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(strings, c, max_size=3), max_leaves=8)
RAW_BODIES = [b"", b"{", b"}", b"[]", b"null", b"0", b'"x"', b"NaN", b"[" * 50000,
              b'{"n": ' + b"1" * 5000 + b"}", b'{"model": "\xff\xfe"}', b"\xef\xbb\xbf{}",
              b'{"model": "tiny", "messages": [', b'{"a": 1, "a": 2}', b"\x00" * 64]


def anything(*specific: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(*specific, junk)


names = anything(st.sampled_from(["tiny", "lora-a", "lora-b", "sentiment", "nope",
                                  "smollm2-135m-instruct", "minilm-l6", "owner/name",
                                  "<allowed>", "../../etc", "/etc"]), strings)
ids = anything(st.sampled_from(["<file>", "<job>", "<completion>", "file-nope", "ftjob-nope",
                                "", "x" * 65]), strings)
part = st.fixed_dictionaries({"type": anything(st.sampled_from(["text", "image_url"])),
                              "text": anything(strings)})
message = st.fixed_dictionaries(
    {"role": anything(st.sampled_from(["system", "developer", "user", "assistant", "tool",
                                       "wizard", "function"])),
     "content": anything(strings, st.lists(part, max_size=3))},
    optional={"name": anything(strings), "tool_calls": junk})
SAMPLING = {
    "model": names, "temperature": anything(numbers), "top_p": anything(numbers),
    "n": anything(numbers), "seed": anything(numbers), "max_tokens": anything(numbers),
    "stop": anything(strings, st.lists(strings, max_size=6)),
    "stream": anything(st.booleans()),
    "stream_options": anything(st.fixed_dictionaries({"include_usage": anything(st.booleans())})),
    "presence_penalty": anything(numbers), "frequency_penalty": anything(numbers),
    "logit_bias": anything(st.dictionaries(st.sampled_from(["0", "5", "50256", "-1"]) | strings,
                                           anything(numbers), max_size=4)),
    "user": anything(strings), "logprobs": junk,
    "response_format": anything(st.fixed_dictionaries(
        {"type": anything(st.sampled_from(["text", "json_object"]))})),
}
CHAT_FIELDS = {**SAMPLING, "messages": anything(st.lists(anything(message), max_size=4)),
               "max_completion_tokens": anything(numbers), "tools": junk}
COMPLETION_FIELDS = {**SAMPLING, "prompt": anything(strings, st.lists(strings, max_size=3)),
                     "echo": anything(st.booleans()), "suffix": junk, "best_of": numbers}
CLASSIFY_FIELDS = {"model": names, "input": anything(strings, st.lists(strings, max_size=3)),
                   "text_pair": anything(strings, st.lists(strings, max_size=3)),
                   "threshold": anything(numbers)}
FEEDBACK_FIELDS = {"completion_id": ids, "id": ids, "choice_index": anything(numbers),
                   "rating": anything(st.sampled_from(["up", "down", "+1", "1", 1, -1, 0])),
                   "score": anything(numbers), "correction": anything(strings),
                   "comment": anything(strings), "user": anything(strings)}
hparams = anything(st.dictionaries(
    st.sampled_from(["n_epochs", "batch_size", "learning_rate_multiplier", "beta"]) | strings,
    anything(st.just("auto"), numbers), max_size=3))
method = anything(st.fixed_dictionaries(
    {"type": anything(st.sampled_from(["supervised", "dpo", "reinforcement"]))},
    optional={"supervised": anything(st.fixed_dictionaries({}, optional={
        "hyperparameters": hparams})), "dpo": anything(st.fixed_dictionaries({}, optional={
            "hyperparameters": hparams}))}))
overrides = anything(st.dictionaries(
    st.sampled_from(["train.max_steps", "train.epochs", "train.lr", "data.max_length",
                     "method.type", "train.batch_size", "train.save_every", "train.grad_accum",
                     "data.val_split", "output.dir", "model.name", "train", "", "a..b",
                     "train.epochs.x"]) | strings,
    anything(numbers, strings), max_size=3))
JOB_FIELDS = {"model": names, "training_file": ids, "validation_file": ids,
              "hyperparameters": hparams, "method": method, "suffix": anything(strings),
              "seed": anything(numbers), "integrations": junk, "tunesmith": overrides,
              "metadata": anything(st.dictionaries(strings, anything(strings), max_size=3))}


@st.composite
def mutated(draw: Any, base: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``base`` with 0-3 changes: a field set to something drawn, dropped, or an extra one."""
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "set", "set", "drop", "extra"]))
        if action == "set":
            key = draw(st.sampled_from(sorted(fields)))
            body[key] = draw(fields[key])
        elif action == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(strings)] = draw(junk)
    return body


# -- requests ------------------------------------------------------------------------------
@dataclass
class Req:
    """One request; ``<file>``, ``<job>``, ``<completion>`` and ``<allowed>`` in it are
    replaced by the fixture's real ids and allowed directory when it is sent."""

    method: str
    path: str
    body: Any = None  # JSON value (sent with NaN/Infinity and \\u escapes as Python writes it)
    raw: bytes | None = None
    content_type: str | None = "application/json"
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    query: dict[str, str] = field(default_factory=dict)


def json_post(path: str, base: dict[str, Any], fields: dict[str, Any]
              ) -> st.SearchStrategy[Req]:
    content_types = st.sampled_from(["application/json"] * 6 + ["text/plain", None])
    return st.one_of(
        st.builds(lambda b, ct: Req("POST", path, body=b, content_type=ct),
                  mutated(base, fields), content_types),
        st.builds(lambda b: Req("POST", path, body=b), junk),
        st.builds(lambda r: Req("POST", path, raw=r), st.sampled_from(RAW_BODIES)))


def segment(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


PLACEHOLDERS = ("<file>", "<job>", "<completion>", "<allowed>")
path_ids = anything(st.sampled_from(PLACEHOLDERS[:3]), strings).map(
    lambda v: v if v in PLACEHOLDERS else segment(v if isinstance(v, str) else json.dumps(v)))
query_values = st.one_of(strings, numbers.map(str), st.sampled_from(["<job>", "<file>"]))
lists_query = st.dictionaries(st.sampled_from(["limit", "after", "order", "purpose"]) | strings,
                              query_values, max_size=3)

MSGS = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "tiny", "messages": MSGS, "max_tokens": 2, "temperature": 0}
COMPLETION = {"model": "tiny", "prompt": "The quick", "max_tokens": 2}
CLASSIFY = {"model": "sentiment", "input": "good"}
FEEDBACK = {"completion_id": "<completion>", "rating": "up"}
JOB = {"model": "tiny", "training_file": "<file>"}
GOOD_ROW = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
PREF_ROW = {"input": {"messages": [{"role": "user", "content": "Hi"}]},
            "preferred_output": [{"role": "assistant", "content": "Hello!"}],
            "non_preferred_output": [{"role": "assistant", "content": "What?"}]}
ROW_FIELDS = {"messages": anything(st.lists(anything(message), max_size=3)),
              "prompt": anything(strings, st.lists(anything(message), max_size=2)),
              "completion": anything(strings, st.lists(anything(message), max_size=2)),
              "input": junk, "preferred_output": junk, "non_preferred_output": junk}
line = st.one_of(mutated(GOOD_ROW, ROW_FIELDS).map(lambda r: json.dumps(r).encode()),
                 mutated(PREF_ROW, ROW_FIELDS).map(lambda r: json.dumps(r).encode()),
                 junk.map(lambda v: json.dumps(v).encode()),
                 st.sampled_from([b"", b"{", b'{"messages": "\xff"}', b"[" * 5000,
                                  b'{"n": ' + b"9" * 5000 + b"}", b"\xef\xbb\xbf{}"]),
                 st.binary(max_size=40))
file_names = st.one_of(st.sampled_from(["train.jsonl", "t.txt", "", ".jsonl", "../x.jsonl",
                                        "a" * 300 + ".jsonl", "x\x00.jsonl"]),
                       strings.map(lambda s: s + ".jsonl"))


def header_text(text: str) -> str:
    """What a form field or file name can carry (HTTP has no unpaired surrogates)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


uploads = st.one_of(
    st.builds(lambda lines, name, purpose, ct: Req(
        "POST", "/v1/files", files={"file": (header_text(name), b"\n".join(lines), ct)},
        data={"purpose": header_text(purpose)}),
        st.lists(line, max_size=12), file_names,
        st.sampled_from(["fine-tune"] * 4 + ["batch", ""]) | strings,
        st.sampled_from(["application/jsonl", "application/octet-stream", "text/plain"])),
    st.builds(lambda purpose: Req("POST", "/v1/files", data={"purpose": header_text(purpose)},
                                  files={"other": ("t.jsonl", b"{}")}), strings),
    st.builds(lambda raw: Req("POST", "/v1/files", raw=raw,
                              content_type="multipart/form-data; boundary=xyz"),
              st.sampled_from([b"", b"--xyz\r\n", b"--xyz\r\nContent-Disposition: form-data; "
                               b'name="file"; filename="a.jsonl"\r\n\r\n{}\r\n']) | st.binary()),
    st.builds(lambda b: Req("POST", "/v1/files", body=b), junk))

ROUTES: dict[str, st.SearchStrategy[Req]] = {
    "chat": json_post("/v1/chat/completions", CHAT, CHAT_FIELDS),
    "completions": json_post("/v1/completions", COMPLETION, COMPLETION_FIELDS),
    "classify": json_post("/v1/classify", CLASSIFY, CLASSIFY_FIELDS),
    "models": st.one_of(st.just(Req("GET", "/v1/models")),
                        st.builds(lambda p: Req("GET", f"/v1/models/{p}"), path_ids),
                        st.builds(lambda p: Req("DELETE", f"/v1/models/{p}"), path_ids)),
    "feedback": json_post("/v1/feedback", FEEDBACK, FEEDBACK_FIELDS),
    "files": st.one_of(
        uploads, st.builds(lambda q: Req("GET", "/v1/files", query=q), lists_query),
        st.builds(lambda m, p, tail: Req(m, f"/v1/files/{p}{tail}"),
                  st.sampled_from(["GET", "DELETE", "POST"]), path_ids,
                  st.sampled_from(["", "/content"]))),
    "jobs_create": json_post("/v1/fine_tuning/jobs", JOB, JOB_FIELDS),
    "jobs_read": st.one_of(
        st.builds(lambda q: Req("GET", "/v1/fine_tuning/jobs", query=q), lists_query),
        st.builds(lambda p, q: Req("GET", f"/v1/fine_tuning/jobs/{p}", query=q), path_ids,
                  lists_query),
        st.builds(lambda p: Req("POST", f"/v1/fine_tuning/jobs/{p}/cancel"), path_ids),
        st.builds(lambda p, tail, q: Req("GET", f"/v1/fine_tuning/jobs/{p}/{tail}", query=q),
                  path_ids, st.sampled_from(["events", "checkpoints"]), lists_query)),
    "other": st.builds(lambda m, p, b: Req(m, p, body=b),
                       st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
                       st.sampled_from(["/", "/v1", "/v1/chat/completions", "/v1/fine_tuning",
                                        "/health", "/v1/files/x/y/z", "/docs", "/openapi.json",
                                        "/v1/nothing"]) | path_ids.map(lambda p: "/" + p),
                       junk),
}
# after each generated request, one that must succeed (on the same client)
FOLLOW_UP = {
    "chat": Req("POST", "/v1/chat/completions", body={**CHAT, "max_tokens": 1}),
    "completions": Req("POST", "/v1/completions", body={**COMPLETION, "max_tokens": 1}),
    "classify": Req("POST", "/v1/classify", body=CLASSIFY),
    "models": Req("GET", "/v1/models"),
    "feedback": Req("POST", "/v1/feedback", body=FEEDBACK),
    "files": Req("GET", "/v1/files"),
    "jobs_create": Req("GET", "/v1/fine_tuning/jobs"),
    "jobs_read": Req("GET", "/v1/fine_tuning/jobs/<job>/events"),
    "other": Req("GET", "/health"),
}


# -- sending and checking ------------------------------------------------------------------
def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, real in ids.items():
            value = value.replace(key, real)
        return value
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {_fill(k, ids): _fill(v, ids) for k, v in value.items()}
    return value


@dataclass
class Fuzz:
    client: Any
    ids: dict[str, str]
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)

    def send(self, route: str, req: Req) -> Any:
        path = _fill(req.path, {k: segment(v) for k, v in self.ids.items()})
        if req.query:
            path += "?" + "&".join(f"{segment(_fill(k, self.ids))}={segment(_fill(v, self.ids))}"
                                   for k, v in req.query.items())
        headers = {"content-type": req.content_type} if req.content_type else {}
        kwargs: dict[str, Any] = {}
        if req.files is not None or req.data is not None:
            kwargs = {"files": req.files, "data": _fill(req.data, self.ids)}
        elif req.raw is not None:
            kwargs = {"content": req.raw, "headers": headers}
        elif req.body is not None:
            kwargs = {"content": json.dumps(_fill(req.body, self.ids)).encode(),
                      "headers": headers}
        resp = self.client.request(req.method, path, **kwargs)
        self.requests[route] += 1
        self.statuses[resp.status_code] += 1
        check(resp, req)
        return resp


def check(resp: Any, req: Req) -> None:
    what = f"{req.method} {req.path} {str(req.body or req.raw or req.files)[:300]}"
    assert resp.status_code < 500, f"{what} -> {resp.status_code} {resp.text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"}, (what, body)
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, (what, err)
        assert isinstance(err["message"], str) and err["message"], (what, err)
        assert err["type"] == "invalid_request_error" or resp.status_code == 429, (what, err)
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        for block in resp.text.split("\n\n"):
            payload = block.removeprefix("data: ").strip()
            if payload and payload != "[DONE]":
                event = json.loads(payload)
                assert "error" not in event, (what, event)


@pytest.fixture(scope="module")
def fuzz(shared_pool: Any, serve_models: dict[str, Path],  # noqa: F811
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """The whole app over the shared tiny models, with a file, a queued job, a completion and
    an allowed base-model directory to aim at."""
    data = tmp_path_factory.mktemp("fuzz-data")
    allowed = serve_models["base"].parent
    with make_client(shared_pool, data, allow_base_dirs=[allowed]) as client:
        rows = "".join(json.dumps(r) + "\n" for r in chat_rows(12)).encode()
        file_id = client.post("/v1/files", files={"file": ("train.jsonl", rows)},
                              data={"purpose": "fine-tune"}).json()["id"]
        job_id = client.post("/v1/fine_tuning/jobs", json={
            "model": "tiny", "training_file": file_id}).json()["id"]
        completion = client.post("/v1/chat/completions", json=CHAT).json()["id"]
        state = Fuzz(client, {"<file>": file_id, "<job>": job_id, "<completion>": completion,
                              "<allowed>": str(serve_models["base"])})
        yield state
    generated = {k: v for k, v in state.requests.items() if not k.endswith("(follow-up)")}
    print(f"\nfuzz: {sum(generated.values())} generated requests {generated} and as many valid "
          f"follow-ups; statuses {dict(sorted(state.statuses.items()))}")


def run_route(fuzz: Fuzz, route: str, req: Req) -> None:
    fuzz.send(route, req)
    follow = fuzz.send(route + " (follow-up)", FOLLOW_UP[route])
    assert follow.status_code == 200, (route, follow.text[:500])


def fuzz_test(examples: int) -> Any:
    """A test that sends ``examples`` generated requests (and their follow-ups) per route."""

    @pytest.mark.parametrize("route", sorted(ROUTES))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def test(fuzz: Fuzz, route: str, data: st.DataObject) -> None:
        run_route(fuzz, route, data.draw(ROUTES[route], label=route))

    return test


test_no_generated_request_gets_a_server_error = fuzz_test(DEFAULT_EXAMPLES)
test_thousands_of_generated_requests_get_no_server_error = pytest.mark.slow(
    fuzz_test(LARGE_EXAMPLES))
