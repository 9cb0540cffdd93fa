"""``textune serve`` as a client sees it: a real server in a subprocess on a free loopback port, talked to over HTTP.

One tiny run is trained for the whole module; its ``textune predict`` output is the expectation every answer is
checked against.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_news, write_recipe

from textune.cli import main

HOST = "127.0.0.1"
START_TIMEOUT_S = 90  # a cold interpreter imports torch and transformers on a shared 2-core machine
MAIN_LIMITS = ["--max-rows", "64", "--max-body-bytes", "100000"]  # small, so the 413 tests send little


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: bytes | dict | None = None, timeout: float = 30.0):
    """(status, lower-cased headers, parsed JSON body or the raw bytes) of one request on a new connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, _decode(resp.read())
    finally:
        conn.close()


def _decode(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def raw_request(port: int, data: bytes) -> tuple[int, dict]:
    """Sends ``data`` as it is (hand-written headers, chunked bodies) and reads one response."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, _decode(resp.read())


class Server:
    """``python -m textune.cli serve RUN --port P ...`` in a subprocess, its output in a log file."""

    def __init__(self, run: Path, log_dir: Path, *args: str):
        self.port = free_port()
        self.log_path = log_dir / f"serve-{self.port}.log"
        self._log = open(self.log_path, "w")
        argv = [sys.executable, "-m", "textune.cli", "serve", str(run), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if call(self.port, "GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"no /health answer within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (the server is killed, and the test fails, if it hangs)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the server did not stop within {timeout} s of SIGTERM:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """A tiny trained run, a pool of rows to send, and ``textune predict --proba`` on the pool (the expectation)."""
    root = tmp_path_factory.mktemp("serve")
    files = {}
    for name, n, seed in (("train", 240, 0), ("valid", 40, 1), ("pool", 120, 7)):
        files[name] = root / f"{name}.csv"
        make_news(n, seed).to_csv(files[name], index=False)
    recipe = write_recipe(
        root / "recipe.yaml",
        tiny_model,
        files["train"],
        data={"validation": str(files["valid"])},
        model={"pooling": "mean"},  # the tiny encoder learns the topics reliably with it (see test_cli_end_to_end)
        train={"max_steps": 40, "eval_every": None},
    )
    run, expected_csv = root / "run", root / "expected.csv"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTUNE_CACHE", str(root / "cache"))
        assert main(["train", str(recipe), "--out", str(run)]) == 0
        assert main(["predict", str(run), "--input", str(files["pool"]), "--output", str(expected_csv), "--proba"]) == 0
    pool = pd.read_csv(files["pool"], dtype=str)
    expected = pd.read_csv(expected_csv, dtype={"id": str}).set_index("id")
    # rows handed back to the wrong request must show: the run has to tell the topics apart
    assert expected["label"].nunique() >= 3, expected["label"].value_counts()
    return {"root": root, "run": run, "pool": pool, "expected": expected}


@pytest.fixture(scope="module")
def server(served):
    srv = Server(served["run"], served["root"], *MAIN_LIMITS)
    yield srv
    srv.kill()


def rows_of(pool: pd.DataFrame, ids: list[str]) -> list[dict]:
    by_id = {row["id"]: row for row in pool[["id", "title", "description"]].to_dict("records")}
    return [by_id[i] for i in ids]


def check_rows(answer: dict, ids: list[str], expected: pd.DataFrame, proba: bool) -> None:
    """The answer holds exactly these ids, in this order, with `textune predict`'s label and probabilities."""
    preds = answer["predictions"]
    assert [p["id"] for p in preds] == ids
    assert [p["label"] for p in preds] == expected.loc[ids, "label"].tolist()
    if proba:
        classes = [c for c in expected.columns if c != "label"]
        got = pd.DataFrame(answer["probabilities"], index=ids)[classes]
        assert (got - expected.loc[ids, classes]).abs().to_numpy().max() < 1e-6
    else:
        assert "probabilities" not in answer


# -- predictions --------------------------------------------------------------------------------------------------


def test_predictions_equal_textune_predict(served, server):
    pool, expected = served["pool"], served["expected"]
    ids = pool["id"].tolist()[:50]
    status, headers, answer = call(server.port, "POST", "/predict", {"rows": rows_of(pool, ids)})
    assert status == 200, answer
    check_rows(answer, ids, expected, proba=False)
    assert headers["content-type"] == "application/json"

    status, _, answer = call(server.port, "POST", "/predict?proba=true", {"rows": rows_of(pool, ids)})
    assert status == 200, answer
    check_rows(answer, ids, expected, proba=True)
    # the answer's columns are the columns of `textune predict --proba`
    assert set(answer["predictions"][0]) | set(answer["probabilities"][0]) == {"id", *expected.columns}

    # one-text runs also take the texts the model reads: no ids then, same predictions
    texts = [f"{r['title']}. {r['description']}" for r in rows_of(pool, ids)]
    status, _, answer = call(server.port, "POST", "/predict", {"texts": texts})
    assert status == 200, answer
    assert [p["label"] for p in answer["predictions"]] == expected.loc[ids, "label"].tolist()
    assert all(set(p) == {"label"} for p in answer["predictions"])


def test_health_and_info(served, server):
    status, _, health = call(server.port, "GET", "/health")
    assert (status, health) == (200, {"status": "ok"})
    status, _, info = call(server.port, "GET", "/info")
    assert status == 200
    summary = json.loads((served["run"] / "summary.json").read_text())
    assert info["task"] == "classification"
    assert info["labels"] == [c for c in served["expected"].columns if c != "label"]  # the run's class order
    assert info["metrics"]["validation"] == summary["validation"]
    assert info["precision"] == "fp32" and info["model"].endswith("bert")
    assert info["input_columns"] == ["title", "description"] and info["id_column"] == "id"
    assert info["limits"]["max_rows"] == 64
    status, _, openapi = call(server.port, "GET", "/openapi.json")
    assert status == 200 and "/predict" in openapi["paths"]
    assert call(server.port, "GET", "/docs")[0] == 200


# -- bad requests -------------------------------------------------------------------------------------------------

ROW = {"id": "a", "title": "Stocks rally", "description": "shares up"}
BAD = [
    ("invalid JSON", b'{"rows": [', 400, "invalid JSON"),
    ("empty body", b"", 400, "empty body"),
    ("not UTF-8", b'{"texts": ["\xff"]}', 400, "not UTF-8"),
    ("not an object", [ROW], 422, "must be a JSON object"),
    ("neither rows nor texts", {}, 422, "exactly one of 'rows'"),
    ("unknown key", {"rows": [ROW], "extra": 1}, 422, "unknown key 'extra'"),
    ("missing column", {"rows": [ROW, {"id": "b", "title": "x"}]}, 422, "rows[1]: missing column 'description'"),
    ("non-string text", {"rows": [{**ROW, "title": 5}]}, 422, "rows[0]: column 'title' must be a string"),
    ("list as text", {"rows": [{**ROW, "description": ["x"]}]}, 422, "column 'description' must be a string"),
    ("row not an object", {"rows": ["text"]}, 422, "rows[0]: must be an object"),
    ("rows not a list", {"rows": ROW}, 422, "'rows' must be a list"),
    ("empty rows", {"rows": []}, 422, "'rows' is empty"),
    ("empty texts", {"texts": []}, 422, "'texts' is empty"),
    ("non-string texts", {"texts": ["ok", 3]}, 422, "texts[1]: must be a string"),
    ("ids in some rows", {"rows": [ROW, {"title": "x", "description": "y"}]}, 422, "missing column 'id'"),
    ("id of a bad type", {"rows": [{**ROW, "id": 1.5}]}, 422, "column 'id' must be a string or a whole number"),
    ("too many rows", {"rows": [{**ROW, "id": str(i)} for i in range(65)]}, 413, "65 rows in one request"),
    ("too many texts", {"texts": ["x"] * 65}, 413, "at most 64 (--max-rows)"),
    ("body too large", {"texts": ["x" * 100_000]}, 413, "at most 100000 (--max-body-bytes)"),
]


def assert_one_line_error(status: int, body, expected_status: int, reason: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    assert reason in body["error"], body["error"]


@pytest.mark.parametrize(("body", "status", "reason"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_request_gets_its_4xx_and_one_line(server, body, status, reason):
    got, _, answer = call(server.port, "POST", "/predict", body)
    assert_one_line_error(got, answer, status, reason)


def test_bad_query_path_and_method(server):
    got, _, answer = call(server.port, "POST", "/predict?proba=maybe", {"rows": [ROW]})
    assert_one_line_error(got, answer, 422, "proba")
    got, _, answer = call(server.port, "GET", "/predict")
    assert_one_line_error(got, answer, 405, "Method Not Allowed")
    got, _, answer = call(server.port, "GET", "/nowhere")
    assert_one_line_error(got, answer, 404, "Not Found")


def test_body_limit_is_checked_before_and_while_reading(server):
    # Content-Length says too much: refused before a byte of the body is read (none is sent)
    head = f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    status, answer = raw_request(server.port, (head + "Content-Length: 500000000\r\n\r\n").encode())
    assert_one_line_error(status, answer, 413, "body of 500000000 bytes")
    # a chunked body declares no length: refused once what was read passes the limit
    chunk = b"x" * 20_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    status, answer = raw_request(server.port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks)
    assert_one_line_error(status, answer, 413, "body larger than 100000 bytes")
    # the server is still fine
    assert call(server.port, "POST", "/predict", {"rows": [ROW]})[0] == 200


# -- load -----------------------------------------------------------------------------------------------------------


def test_load_loses_no_request_and_batches(served, server):
    """2,000 requests from 32 concurrent clients, each with 1-3 distinct rows: every request gets its own rows
    back, and requests share forward passes."""
    pool, expected = served["pool"], served["expected"]
    n_requests, n_clients, deadline = 2000, 32, time.monotonic() + 120
    rng = random.Random(0)
    plans = [(rng.sample(pool["id"].tolist(), rng.randint(1, 3)), i % 2 == 0) for i in range(n_requests)]
    bodies = [json.dumps({"rows": rows_of(pool, ids)}) for ids, _ in plans]
    # the expectation as plain lists: checking 2,000 answers in pandas would slow the clients down
    classes = [c for c in expected.columns if c != "label"]
    want = {i: (row["label"], [row[c] for c in classes]) for i, row in expected.to_dict("index").items()}
    before = call(server.port, "GET", "/info")[2]["batching"]
    results: list = [None] * n_requests

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=30)  # keep-alive, as a real client would
        try:
            for i in range(k, n_requests, n_clients):
                if time.monotonic() > deadline:
                    return
                conn.request("POST", "/predict?proba=true" if plans[i][1] else "/predict", body=bodies[i])
                resp = conn.getresponse()
                results[i] = (resp.status, int(resp.getheader("X-Batch-Requests", "0")), json.loads(resp.read()))
        finally:
            conn.close()

    with ThreadPoolExecutor(n_clients) as clients:
        for future in [clients.submit(client, k) for k in range(n_clients)]:
            future.result()
    done = [r for r in results if r is not None]
    assert len(done) == n_requests, f"only {len(done)} of {n_requests} requests answered in time"
    for (ids, proba), (status, _, answer) in zip(plans, results, strict=True):
        assert status == 200, answer
        assert [p["id"] for p in answer["predictions"]] == ids  # its own rows, in its order
        assert [p["label"] for p in answer["predictions"]] == [want[i][0] for i in ids]
        if proba:
            got = [p[c] for p in answer["probabilities"] for c in classes]
            assert max(abs(g - w) for g, w in zip(got, [p for i in ids for p in want[i][1]], strict=True)) < 1e-6
        else:
            assert "probabilities" not in answer
    shared = sum(1 for _, batch, _ in results if batch > 1)
    assert shared > 0, "no request shared a forward pass with another"
    after = call(server.port, "GET", "/info")[2]["batching"]
    assert after["requests"] - before["requests"] == n_requests
    assert after["largest_batch_requests"] > 1 and after["rejected_overloaded"] == 0
    print(f"load: {shared} of {n_requests} requests shared a pass; {after['batches'] - before['batches']} passes")


# -- overload, errors, shutdown ---------------------------------------------------------------------------------------


def test_overload_answers_503_never_500_and_sigterm_stops_cleanly(served):
    """A flood on a one-request queue: some 503s (with Retry-After), no 500. Then SIGTERM with requests still in
    flight: they are answered, and the server exits 0. (One server for both: each start costs seconds.)"""
    srv = Server(served["run"], served["root"], "--max-queue", "1", "--max-batch", "1")
    try:
        limits = call(srv.port, "GET", "/info")[2]["limits"]
        # the defaults of the options this server was not given
        assert (limits["max_rows"], limits["max_body_bytes"], limits["max_wait_ms"]) == (1024, 8 * 1024 * 1024, 5)
        body = {"rows": rows_of(served["pool"], served["pool"]["id"].tolist()[:64])}  # slow passes: a queue forms
        with ThreadPoolExecutor(48) as clients:
            answers = list(clients.map(lambda _: call(srv.port, "POST", "/predict", body), range(240)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        assert statuses.count(503) > 0 and statuses.count(200) > 0
        for status, headers, answer in answers:
            if status == 503:
                assert_one_line_error(status, answer, 503, "overloaded")
                assert headers["retry-after"] == "1"
        info = call(srv.port, "GET", "/info")[2]["batching"]
        assert info["rejected_overloaded"] == statuses.count(503)
        assert info["largest_batch_requests"] == 1  # --max-batch 1: no pass is shared

        stop, in_flight = threading.Event(), []

        def flood() -> None:
            while not stop.is_set():
                try:
                    in_flight.append(call(srv.port, "POST", "/predict", {"rows": [ROW]}, timeout=10)[0])
                except OSError:  # refused or closed: the server is going away
                    time.sleep(0.01)

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            assert srv.terminate(timeout=30) == 0, srv.log()
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        assert in_flight.count(200) > 0 and set(in_flight) <= {200, 503}, sorted(set(in_flight))
        assert "Traceback" not in srv.log()
    finally:
        srv.kill()


def test_two_workers_answer_and_stop_cleanly(served):
    srv = Server(served["run"], served["root"], "--workers", "2")
    try:
        pool, expected = served["pool"], served["expected"]
        ids = pool["id"].tolist()[:5]
        deadline = time.monotonic() + 60  # /health answered once one worker was up; the other may still load
        while srv.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.log().count("Application startup complete") == 2, srv.log()
        for _ in range(4):
            status, _, answer = call(srv.port, "POST", "/predict?proba=true", {"rows": rows_of(pool, ids)})
            assert status == 200, answer
            check_rows(answer, ids, expected, proba=True)
        assert srv.terminate(timeout=30) == 0, srv.log()
    finally:
        srv.kill()


def test_unexpected_errors_are_one_line_500s(served, monkeypatch):
    """In-process (so a failure can be injected): a forward pass or a handler that raises gives the client a
    one-line 500, and the worker keeps serving."""
    import uvicorn

    from textune.predict import Predictor
    from textune.serve import ServeOptions, create_app

    predictor = Predictor.load(served["run"])
    app = create_app(predictor, ServeOptions(max_wait_ms=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        logits = predictor.logits

        def broken(*args, **kwargs):
            raise RuntimeError("injected failure\nwith a second line")

        monkeypatch.setattr(predictor, "logits", broken)
        status, _, answer = call(port, "POST", "/predict", {"rows": [ROW]})
        assert_one_line_error(status, answer, 500, "internal error (RuntimeError)")
        assert "injected" not in answer["error"]  # the reason is logged on the server, not sent to the client
        monkeypatch.setattr(predictor, "logits", logits)
        assert call(port, "POST", "/predict", {"rows": [ROW]})[0] == 200  # the worker survived

        def parse_fails(payload):
            raise KeyError("boom")

        monkeypatch.setattr(app.state.parser, "parse", parse_fails)
        status, _, answer = call(port, "POST", "/predict", {"rows": [ROW]})
        assert_one_line_error(status, answer, 500, "internal error (KeyError)")
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


# -- the command's own checks -----------------------------------------------------------------------------------------

CHECK_ARGS = """
import json, sys
from textune.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out.append(code)
print(json.dumps({"codes": out, "torch": "torch" in sys.modules}))
"""


def test_serve_checks_its_arguments_before_loading_torch(served, tmp_path):
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "summary.json").write_text('{"kind": "baseline"}')
    run = str(served["run"])
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["serve", str(tmp_path / "missing")], "run directory not found"),
            (["serve", str(tmp_path)], "neither a run directory"),
            (["serve", str(baseline)], "is a baseline"),
            (["serve", run, "--port", "0"], "--port: expected a port number 1-65535"),
            (["serve", run, "--port", "70000"], "--port: expected a port number 1-65535"),
            (["serve", run, "--max-batch", "0"], "--max-batch: must be >= 1"),
            (["serve", run, "--max-queue", "-3"], "--max-queue: must be >= 1"),
            (["serve", run, "--max-wait-ms", "-1"], "--max-wait-ms: expected 0 to 10000"),
            (["serve", run, "--workers", "0"], "--workers: must be >= 1"),
            (["serve", run, "--port", port], "is already in use"),
        ]
        proc = subprocess.run(
            [sys.executable, "-c", CHECK_ARGS, json.dumps([argv for argv, _ in cases])],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["codes"] == [2] * len(cases), proc.stderr
    assert not result["torch"], "torch was imported for a command that failed on its arguments"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(cases), proc.stderr
    for line, (_, reason) in zip(errors, cases, strict=True):
        assert reason in line, line


def test_an_ensemble_of_members_with_other_templates_takes_rows_with_every_members_columns():
    """Members of an ensemble may render their text from other columns: plain texts rendered with the first member's
    template would feed the others the wrong input, so rows are required, with the union of the members' columns."""
    from types import SimpleNamespace

    from textune.recipe import recipe_from_dict
    from textune.serve import ClientError, RequestParser
    from textune.tasks import get_task

    def member(text):
        recipe = recipe_from_dict({"data": {"text": text, "label": "label"}})
        return SimpleNamespace(recipe=recipe, task=get_task("classification")(recipe), featurizer=None)

    first, second = member("{title}"), member("{title}. {description}")
    ensemble = SimpleNamespace(recipe=first.recipe, task=first.task, featurizer=None, members=[first, second])
    parser = RequestParser(ensemble, max_rows=10)
    with pytest.raises(ClientError, match="send 'rows'"):
        parser.parse({"texts": ["stocks rally"]})
    with pytest.raises(ClientError, match="description"):
        parser.parse({"rows": [{"title": "stocks rally"}]})
    parsed = parser.parse({"rows": [{"title": "stocks rally", "description": "profits rise"}]})
    assert list(parsed.inputs.columns) == ["title", "description"]  # a frame: each member renders its own text
    single = RequestParser(SimpleNamespace(**{**vars(ensemble), "members": [first]}), max_rows=10)
    assert single.parse({"texts": ["stocks rally"]}).inputs == ["stocks rally"]
