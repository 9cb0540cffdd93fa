"""``textune serve``: a run behind an HTTP API (FastAPI + uvicorn), with server-side micro-batching.

A request is read, parsed and checked on the event loop, so a bad one is answered at once (4xx, a one-line
``{"error": ...}``) and never reaches the model. A good one is queued; one worker thread takes the queue's head,
waits up to ``max_wait_ms`` for more requests (up to ``max_batch`` rows in all), runs one forward pass for all of
them through :meth:`textune.predict.Predictor.logits` (the inference path of ``textune predict``) and hands each
request its own rows through its asyncio future. One forward pass at a time: torch already spreads one pass over
every core, and two passes would only contend for them. A full queue answers 503 at once instead of holding more
requests in memory.

torch is imported only when a Predictor is loaded: ``textune serve`` checks its arguments and binds its port
before paying seconds for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from textune import startup
from textune._version import __version__
from textune.data.io import template_columns
from textune.errors import TextuneError
from textune.run import layout

log = logging.getLogger(__name__)

# What a worker process of `--workers N` reads to build its app (uvicorn imports the factory by name).
ENV_RUN = "TEXTUNE_SERVE_RUN"
ENV_OPTIONS = "TEXTUNE_SERVE_OPTIONS"
# Seconds uvicorn gives open requests to finish after SIGTERM/Ctrl-C before it closes them.
GRACEFUL_SHUTDOWN_S = 10
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that never started: its supervisor then stops


@dataclass(frozen=True)
class ServeOptions:
    """The server's limits and batching settings (the ``textune serve`` options of the same names).

    Attributes:
        max_batch: most rows in one forward pass gathered from several requests (a larger single request runs
            alone); 1 switches micro-batching off.
        max_wait_ms: how long the worker waits for more requests after taking the first one of a batch.
        max_queue: most requests waiting for the worker; one more is answered 503.
        max_rows: most rows in one request (413 above).
        max_body_bytes: largest request body (413 above), from Content-Length and while reading.
        precision: inference precision (``fp32``, ``bf16``, ``fp16``); None: the run's own.
        workers: uvicorn worker processes, each with its model and batcher.
    """

    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_rows: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    precision: str | None = None
    workers: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


class ClientError(Exception):
    """A request the server refuses: the HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(str(message).split()))
        self.status = status


# -- requests ---------------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    """A checked request: what the Predictor reads, its row count and the ids to echo (None: no id column)."""

    inputs: list[str] | pd.DataFrame
    rows: int
    ids: list[Any] | None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


class RequestParser:
    """Turns a request body into :class:`Parsed` or a :class:`ClientError` naming the row, column and fix.

    Rows must carry every column the run reads (``task.input_columns()`` and any feature columns); text cells
    must be strings (null counts as an empty cell, as a blank CSV cell does for ``textune predict``). ``texts``
    is accepted for runs that read one text and no features: each is the text the model reads, as the run's
    ``data.text`` template would render it.
    """

    def __init__(self, predictor, max_rows: int):
        recipe, task = predictor.recipe, predictor.task
        self.task = task
        # an ensemble's members may read other columns and templates: rows must carry every member's columns
        members = getattr(predictor, "members", None) or [predictor]
        self.text_columns: dict[str, str] = {}
        extra: dict[str, str] = {}
        for member in members:
            self.text_columns |= member.task.input_columns()
            feats = member.recipe.features
            extra |= {c: "features.numeric" for c in feats.numeric}
            extra |= {c: "features.categorical" for c in feats.categorical}
            for emb in feats.embeddings:
                if emb.text:
                    extra |= {c: "features.embeddings text" for c in template_columns(emb.text)}
        self.feature_columns = {c: k for c, k in extra.items() if c not in self.text_columns}
        self.id_col = recipe.data.id
        # plain texts only where every member renders its text the same way (else each needs its own rows)
        templates = {(m.recipe.data.text, m.recipe.data.text_pair) for m in members}
        self.accepts_texts = (
            all(m.task.single_text for m in members) and predictor.featurizer is None and len(templates) == 1
        )
        self.max_rows = max_rows

    def parse(self, payload: Any) -> Parsed:
        if not isinstance(payload, dict):
            raise ClientError(422, f'the body must be a JSON object like {{"rows": [...]}}, got {_json_type(payload)}')
        unknown = sorted(set(payload) - {"rows", "texts"})
        if unknown:
            raise ClientError(422, f"unknown key '{unknown[0]}' in the body; send 'rows' (a list of objects)")
        if ("rows" in payload) == ("texts" in payload):
            raise ClientError(422, "send exactly one of 'rows' (a list of objects) and 'texts' (a list of strings)")
        if "texts" in payload:
            return self._texts(payload["texts"])
        return self._rows(payload["rows"])

    def _count(self, items: Any, key: str, what: str) -> int:
        if not isinstance(items, list):
            raise ClientError(422, f"'{key}' must be a list of {what}, got {_json_type(items)}")
        if not items:
            raise ClientError(422, f"'{key}' is empty; send at least one")
        if len(items) > self.max_rows:
            raise ClientError(413, f"{len(items)} {key} in one request; at most {self.max_rows} (--max-rows)")
        return len(items)

    def _texts(self, texts: Any) -> Parsed:
        if not self.accepts_texts:
            cols = ", ".join(f"'{c}'" for c in {**self.text_columns, **self.feature_columns})
            raise ClientError(422, f"this run reads the columns {cols}: send 'rows' with them, not 'texts'")
        n = self._count(texts, "texts", "strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ClientError(422, f"texts[{i}]: must be a string, got {_json_type(text)}")
        return Parsed(list(texts), n, None)

    def _rows(self, rows: Any) -> Parsed:
        n = self._count(rows, "rows", "objects")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ClientError(422, f"rows[{i}]: must be an object of column: value, got {_json_type(row)}")
            for col, key in {**self.text_columns, **self.feature_columns}.items():
                if col not in row:
                    raise ClientError(422, f"rows[{i}]: missing column '{col}' (the run's {key})")
                value = row[col]
                if col in self.text_columns and not (value is None or isinstance(value, str)):
                    raise ClientError(422, f"rows[{i}]: column '{col}' must be a string, got {_json_type(value)}")
                if isinstance(value, dict | list):
                    raise ClientError(422, f"rows[{i}]: column '{col}' must be a number, a string or null")
        ids = self._ids(rows)
        needed = [*self.text_columns, *self.feature_columns]
        frame = pd.DataFrame({c: [row[c] for row in rows] for c in needed}, index=range(n))
        try:
            inputs = self.task.texts(frame, "request") if self.accepts_texts else frame
        except TextuneError as exc:
            raise ClientError(422, str(exc)) from None
        return Parsed(inputs, n, ids)

    def _ids(self, rows: list[dict]) -> list[Any] | None:
        """The rows' ids when the run has ``data.id`` and the rows carry it (in all rows or in none)."""
        col = self.id_col
        if not col or not any(col in row for row in rows):
            return None
        ids = []
        for i, row in enumerate(rows):
            if col not in row:
                raise ClientError(422, f"rows[{i}]: missing column '{col}' (the run's data.id): give it in every row")
            value = row[col]
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ClientError(422, f"rows[{i}]: column '{col}' must be a string or a whole number")
            ids.append(value)
        return ids


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes: from Content-Length before reading anything, and
    while reading (a chunked body declares no length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"body of {int(declared)} bytes; at most {limit} (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"body larger than {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ClientError(400, 'empty body; send JSON like {"rows": [...]}')
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ClientError(400, "invalid JSON: the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ClientError(400, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ClientError(400, "invalid JSON: nested too deeply") from None


# -- the batcher ------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    parsed: Parsed
    proba: bool
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


@dataclass
class Answer:
    """A request's response body and the forward pass it was served in."""

    body: dict[str, Any]
    batch_requests: int
    batch_rows: int


class _InternalError(Exception):
    """An unexpected failure of the forward pass, already logged; the client gets a one-line 500."""


@dataclass
class _Stats:
    batches: int = 0
    requests: int = 0
    rows: int = 0
    largest_batch_requests: int = 0
    largest_batch_rows: int = 0
    rejected_overloaded: int = 0
    batch_requests_histogram: dict[int, int] = field(default_factory=dict)


class Batcher:
    """One worker thread running the Predictor on micro-batches of queued requests.

    Args:
        predictor: a loaded :class:`textune.predict.Predictor`.
        options: batching limits (``max_batch``, ``max_wait_ms``, ``max_queue``).
    """

    def __init__(self, predictor, options: ServeOptions):
        self.predictor, self.options = predictor, options
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats = _Stats()
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="textune-serve-batcher", daemon=True)

    # -- event loop side ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    async def submit(self, parsed: Parsed, proba: bool) -> Answer:
        """Queues one request and waits for its rows.

        Raises:
            ClientError: 503 when the queue is full or the server is stopping; 422 when the Predictor refuses the
                request's rows.
        """
        loop = asyncio.get_running_loop()
        job = _Job(parsed, proba, loop.create_future(), loop)
        with self._cond:
            if self._closed:
                raise ClientError(503, "the server is shutting down")
            if len(self._queue) >= self.options.max_queue:
                with self._stats_lock:
                    self._stats.rejected_overloaded += 1
                raise ClientError(
                    503, f"overloaded: {len(self._queue)} requests queued (--max-queue {self.options.max_queue})"
                )
            self._queue.append(job)
            self._cond.notify()
        return await job.future

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            out = dataclasses.asdict(self._stats)
        out["queued"] = len(self._queue)
        return out

    def stop(self, timeout: float = 30.0) -> None:
        """Lets the worker finish what is queued, then stops it; jobs still queued after ``timeout`` get 503."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for job in left:
            self._settle(job, error=ClientError(503, "the server is shutting down"))

    # -- worker thread -----------------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Job] | None:
        """The queue's head and whatever fits behind it within ``max_wait_ms``; None once closed and drained."""
        opts = self.options
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            rows = batch[0].parsed.rows
            deadline = time.monotonic() + opts.max_wait_ms / 1000
            while rows < opts.max_batch:
                if not self._queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
                    continue
                if rows + self._queue[0].parsed.rows > opts.max_batch:
                    break  # the next request waits for the next pass rather than overfilling this one
                job = self._queue.popleft()
                batch.append(job)
                rows += job.parsed.rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # the worker must outlive any one batch: its clients still wait
                log.exception("prediction worker: unexpected failure")
                for job in batch:
                    self._settle(job, error=_InternalError(type(exc).__name__))

    def _run(self, batch: list[_Job]) -> None:
        parts = [job.parsed.inputs for job in batch]
        if len(parts) == 1:
            inputs = parts[0]
        elif isinstance(parts[0], pd.DataFrame):
            inputs = pd.concat(parts, ignore_index=True)
        else:
            inputs = [text for part in parts for text in part]
        try:
            logits = self.predictor.logits(inputs, source="request")
        except Exception as exc:
            if len(batch) > 1:
                # one request's rows may be what failed: alone, each of the others still gets its answer
                for job in batch:
                    self._run([job])
                return
            if isinstance(exc, TextuneError):
                self._settle(batch[0], error=ClientError(422, str(exc)))
            else:
                log.exception("prediction failed")
                self._settle(batch[0], error=_InternalError(type(exc).__name__))
            return
        self._answer(batch, logits)

    def _answer(self, batch: list[_Job], logits) -> None:
        """Each request's rows of the pass, in the columns ``textune predict`` writes: the id (when the rows carry
        the run's data.id), the predicted label(s), and the class probabilities when asked for (always for tasks
        scored on probabilities, whose submissions are the probabilities)."""
        task = self.predictor.task
        preds = task.predictions(logits)
        probs = task.predictions(logits, proba=True)
        probabilistic = list(probs.columns) != list(preds.columns)  # regression has no probabilities
        pred_records = preds.to_dict("records")
        prob_records = probs.to_dict("records") if probabilistic else None
        id_col = self.predictor.recipe.data.id
        n_rows = sum(job.parsed.rows for job in batch)
        with self._stats_lock:  # before any answer: a client reading /info next sees its pass
            s = self._stats
            s.batches += 1
            s.requests += len(batch)
            s.rows += n_rows
            s.largest_batch_requests = max(s.largest_batch_requests, len(batch))
            s.largest_batch_rows = max(s.largest_batch_rows, n_rows)
            s.batch_requests_histogram[len(batch)] = s.batch_requests_histogram.get(len(batch), 0) + 1
        start = 0
        for job in batch:
            stop = start + job.parsed.rows
            records = pred_records[start:stop]
            if job.parsed.ids is not None:
                records = [{id_col: i, **r} for i, r in zip(job.parsed.ids, records, strict=True)]
            body: dict[str, Any] = {"predictions": records}
            if prob_records is not None and (job.proba or task.submission_proba):
                body["probabilities"] = prob_records[start:stop]
            self._settle(job, Answer(body, len(batch), n_rows))
            start = stop

    @staticmethod
    def _settle(job: _Job, answer: Answer | None = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the request was cancelled (client gone, server stopping)
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(answer)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            job.loop.call_soon_threadsafe(settle)


# -- the app ----------------------------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """Rows with the run's input columns, or (one-text runs) the texts themselves."""

    rows: list[dict[str, Any]] | None = Field(
        None, description="One object per row: the run's input columns (and its data.id column, echoed back)."
    )
    texts: list[str] | None = Field(
        None, description="Runs that read one text and no features: the texts the model reads."
    )


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]] = Field(description="Per row, in request order: the id and the prediction.")
    probabilities: list[dict[str, Any]] | None = Field(
        None, description="With ?proba=true: per row, one probability per class."
    )


class ErrorResponse(BaseModel):
    error: str


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _precision_name(precision: str) -> str:
    return {"no": "fp32"}.get(precision, precision)


# Longer than most functions here: the routes are closures over one batcher and one set of limits, and reading
# them together shows every status code the server can answer.
def create_app(predictor, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor``: ``POST /predict``, ``GET /health``, ``GET /info``, docs at ``/docs``.

    The batcher's worker thread starts with the app (lifespan) and stops with it.

    Args:
        predictor: a loaded :class:`textune.predict.Predictor`.
        options: limits and batching settings (defaults: :class:`ServeOptions`).
    """
    options = options or ServeOptions()
    parser = RequestParser(predictor, options.max_rows)
    batcher = Batcher(predictor, options)
    info = _run_info(predictor, parser, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            # off the loop: the worker may be finishing a forward pass for requests uvicorn already gave up on
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="textune serve",
        version=__version__,
        description=f"Predictions of the textune run `{predictor.run_dir}` ({predictor.recipe.task}).",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.parser = batcher, parser

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        return _error(exc.status, str(exc), {"Retry-After": "1"} if exc.status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = exc.detail if isinstance(exc.detail, str) else "bad request"
        return _error(exc.status_code, f"{reason}: {request.method} {request.url.path}", exc.headers)

    @app.exception_handler(_InternalError)
    async def failed_pass(request: Request, exc: _InternalError) -> JSONResponse:
        return _error(500, f"internal error ({exc}); see the server log")  # logged by the worker

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response is sent, so the traceback reaches the server log, not the client
        log.error("500 on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.post(
        "/predict",
        summary="Predict rows",
        response_model=None,
        responses={
            200: {"model": PredictResponse},
            400: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(request: Request, proba: bool = False) -> Response:
        """Predictions for the rows, in request order; ``?proba=true`` adds one probability per class. Headers
        ``X-Batch-Requests`` and ``X-Batch-Rows`` say how many requests and rows shared its forward pass."""
        # the body is read and parsed here, not by FastAPI, to bound its size while reading and to answer
        # every malformed body with one line
        payload = parse_json(await read_body(request, options.max_body_bytes))
        answer = await batcher.submit(parser.parse(payload), proba)
        return JSONResponse(
            answer.body,
            headers={"X-Batch-Requests": str(answer.batch_requests), "X-Batch-Rows": str(answer.batch_rows)},
        )

    @app.get("/health", summary="Liveness")
    async def health() -> JSONResponse:
        if not batcher.alive:
            return _error(503, "the prediction worker is not running")
        return JSONResponse({"status": "ok"})

    @app.get("/info", summary="The run, its metrics and the server's batching figures")
    async def run_info() -> JSONResponse:
        return JSONResponse({**info, "batching": batcher.stats(), "pid": os.getpid()})

    return app


def _run_info(predictor, parser: RequestParser, options: ServeOptions) -> dict[str, Any]:
    """What /info reports about the run: task, labels, model, metrics (summary.json; none for exports), precision."""
    task, recipe = predictor.task, predictor.recipe
    metrics = None
    if (Path(predictor.run_dir) / layout.SUMMARY).is_file():
        try:
            summary = layout.read_summary(predictor.run_dir)
            metrics = {split: summary[split] for split in ("validation", "test") if summary.get(split)}
        except (TextuneError, AttributeError):
            metrics = None
    return {
        "run": str(predictor.run_dir),
        "task": recipe.task,
        "labels": task.class_names or getattr(task, "labels", None),
        "model": recipe.model.name,
        "metrics": metrics,
        "precision": _precision_name(predictor.precision),
        "device": str(predictor.device),
        "input_columns": list({**parser.text_columns, **parser.feature_columns}),
        "id_column": recipe.data.id,
        "accepts_texts": parser.accepts_texts,
        "limits": dataclasses.asdict(options),
        "textune": __version__,
    }


# -- running it -------------------------------------------------------------------------------------------------


def load_predictor(run_dir: str | Path, precision: str | None = None):
    from textune.predict import Predictor  # torch: only once the command and its port are known to be good

    return Predictor.load(run_dir, precision=precision)


def app_from_env() -> FastAPI:
    """The app factory of each ``--workers N`` process (uvicorn imports it by name): the run directory and the
    options come from the environment; each worker loads its own copy of the model."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    options = ServeOptions.from_json(os.environ.get(ENV_OPTIONS, "{}"))
    try:
        predictor = load_predictor(os.environ[ENV_RUN], options.precision)
    except (TextuneError, KeyError) as exc:
        log.error("worker %d cannot load the run: %s", os.getpid(), exc)
        raise SystemExit(STARTUP_FAILURE) from None
    import torch

    # N workers share the cores: each with all of them would oversubscribe the CPU many times over
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // options.workers))
    return create_app(predictor, options)


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), or a one-line error: the port is checked before the
    model loads, and the workers of ``--workers N`` share this socket."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise TextuneError(f"--host {host}: not an address to listen on ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TextuneError(f"--port {port}: {host}:{port} is already in use; choose another --port") from None
        raise TextuneError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _private_token_cache() -> Any:
    """The token cache in a temporary directory while the server runs. The cache is keyed by a batch's exact
    texts, so a server's batches almost never hit it and each would leave a file behind in the user's cache."""
    old = os.environ.get("TEXTUNE_CACHE")
    with tempfile.TemporaryDirectory(prefix="textune-serve-") as tmp:
        os.environ["TEXTUNE_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TEXTUNE_CACHE", None)
            else:
                os.environ["TEXTUNE_CACHE"] = old


def serve(run_dir: str | Path, sock: socket.socket, options: ServeOptions, access_log: bool = False) -> int:
    """Serves ``run_dir`` on the bound ``sock`` until SIGTERM or Ctrl-C, then shuts down gracefully.

    One worker: the Predictor is loaded here, once. ``options.workers > 1``: uvicorn's supervisor starts that many
    processes, each loading the model (N times the memory) through :func:`app_from_env`.

    Returns:
        0 after a clean shutdown.

    Raises:
        TextuneError: the run cannot be loaded, or the server (a worker) did not start.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    common = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": access_log,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "lifespan": "on",
    }
    with _private_token_cache():
        if options.workers > 1:
            from uvicorn.supervisors import Multiprocess

            os.environ[ENV_RUN] = str(Path(run_dir).resolve())
            os.environ[ENV_OPTIONS] = options.to_json()
            config = uvicorn.Config("textune.serve:app_from_env", factory=True, workers=options.workers, **common)
            print(f"serving {run_dir} on http://{host}:{port} with {options.workers} workers (docs: /docs)", flush=True)
            supervisor = Multiprocess(config, sockets=[sock])
            startup.hand_over()  # the workers load the run; this process only watches them
            supervisor.run()  # handles SIGINT/SIGTERM itself: stops the workers and returns
            if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
                raise TextuneError("a worker could not load the run (its message is above)")
            return 0
        predictor = load_predictor(run_dir, options.precision)
        server = uvicorn.Server(uvicorn.Config(create_app(predictor, options), **common))
        print(f"serving {run_dir} on http://{host}:{port} (docs: /docs)", flush=True)
        with _signals_stop(server):
            server.run(sockets=[sock])
        if not server.started:
            raise TextuneError("the server did not start (its message is above)")
        return 0


@contextlib.contextmanager
def _signals_stop(server) -> Any:
    """SIGINT/SIGTERM ask ``server`` to shut down gracefully, and nothing more.

    uvicorn handles both while it runs, then raises the signal again under the handler it found, so that a
    default handler ends the process after its shutdown: by the signal (SIGTERM) or a KeyboardInterrupt (Ctrl-C).
    A clean shutdown is exit code 0 here; the handler below is the one uvicorn finds, and it also covers a signal
    that comes before uvicorn installs its own.
    """

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
