"""The HTTP service: FastAPI app around the micro-batcher, the model holder and the prediction log (no torch)."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime, and the request
# model is built per app (its limits come from the settings).

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.routing import Match

from tasks.core.errors import TunegateError
from tasks.runtime.parity import ParityOutcome, check_served, enforce
from tasks.runtime.settings import API_KEYS_ENV, ServeSettings, api_keys
from tasks.serving import scoring
from tasks.serving.batcher import BatcherStopped, MicroBatcher, QueueFull
from tasks.serving.metrics import ServiceMetrics
from tasks.serving.predlog import PredictionLog
from tasks.serving.reload import reload_if_changed
from tasks.serving.scoring import ModelHolder, ServedModel, TextScore, cores, thread_plan
from tasks.serving.shadow import Mirror
from tasks.serving.source import ModelSource, source_for

log = logging.getLogger("tasks.serving")

LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
PREDICT_PATH = "/v1/predict"
OPEN_PATHS = frozenset({LIVE_PATH, READY_PATH})  # probes carry no key; everything else is keyed when keys exist
PLATFORM = "onnxruntime"
VERSION_HEADER = "X-Model-Version"
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but the metric and the log show it

# ---------------------------------------------------------------- response and request models

class ErrorBody(BaseModel):
    """Every error the service answers: a short code and what went wrong."""
    error: str
    detail: str


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    truncated: bool = Field(description="the model did not read every token of the text (it was longer than the "
                                        "model's window, and serving.json's long_text rule skipped some of it)")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str
    predictions: list[Prediction]


class ModelMetadata(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    name: str
    version: str
    labels: list[str]
    max_length: int
    long_text: dict[str, str | int] = Field(description="how a text longer than max_length is read: {'rule': 'head'}, "
                                            "{'rule': 'head_tail', 'head_tokens': H} or {'rule': 'window', "
                                            "'stride': S, 'aggregate': A}, optionally with 'max_windows': K "
                                            "(at most K windows per text)")
    model_sha256: str
    precision: str | None
    platform: str
    parity: dict[str, Any] | None = Field(
        description="the parity certificate check of this version on this host: status (passed | failed | "
                    "no_certificate), detail, action (serve.parity_action) and, when checked, agreement, "
                    "min_agreement, texts, max_prob_delta, tolerance, judged_on and this_host (CPU features), "
                    "same_numerics, differing and the first differing texts (shown)")


class LoadResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str
    changed: bool


class Health(BaseModel):
    status: str


def request_model(settings: ServeSettings) -> type[BaseModel]:
    """The /v1/predict body with this service's limits, so /openapi.json states them too."""
    # pydantic's str refuses lone surrogates (legal JSON escapes the tokenizer cannot take): 422, not 500.
    text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]
    return create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid", strict=True),
        texts=(list[text], Field(min_length=1, max_length=settings.max_texts,
                                 description=f"1 to {settings.max_texts} texts (serve.max_texts) of at most "
                                             f"{settings.max_text_chars} characters (serve.max_text_chars)")))


# ---------------------------------------------------------------- pure helpers

def key_matches(given: str, keys: tuple[bytes, ...]) -> bool:
    """Constant-time: compared with every key, no early exit."""
    candidate = given.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key of `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return key or None


def predictions(labels: list[str], scores: list[TextScore]) -> list[Prediction]:
    return [Prediction(label=s.label, probabilities=dict(zip(labels, s.probabilities)),
                       truncated=s.read_tokens < s.tokens) for s in scores]


def explain_invalid(errors: list[dict[str, Any]], settings: ServeSettings) -> str:
    """One line per validation error; the limits name their setting."""
    lines = []
    for err in errors:
        loc, kind = tuple(err.get("loc", ())), err.get("type", "")
        where = ".".join(str(p) for p in loc[1:]) or "body"
        if kind == "json_invalid":
            lines.append(f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))} (at character {loc[-1]})")
        elif loc[1:] == ("texts",) and kind == "too_long":
            lines.append(f"at most {settings.max_texts} texts per request (serve.max_texts)")
        elif loc[1:] == ("texts",) and kind == "too_short":
            lines.append("texts must hold at least one text")
        elif len(loc) == 3 and loc[1] == "texts" and kind == "string_too_long":
            lines.append(f"texts[{loc[2]}] is longer than {settings.max_text_chars} characters (serve.max_text_chars)")
        elif len(loc) == 3 and loc[1] == "texts":
            lines.append(f"texts[{loc[2]}]: {err.get('msg')}")
        elif loc[1:] == () or (kind == "missing" and loc[1:] == ("texts",)):  # no body, or not an object
            lines.append('the body must be a JSON object {"texts": ["...", ...]} (Content-Type: application/json)')
        else:
            lines.append(f"{where}: {err.get('msg')}")
    return "; ".join(dict.fromkeys(lines))  # one line per distinct problem


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


# ---------------------------------------------------------------- ASGI middleware (outermost first)

class RequestMetrics:
    """Latency by route template and status of every request, refused ones included."""

    def __init__(self, app, metrics: ServiceMetrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def template(self, scope) -> str:
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return route.path
        return "other"  # unknown paths share one label: no cardinality from scanners

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.on_request(self.template(scope), status, time.perf_counter() - started)


class RequireKey:
    """401 without a valid key when keys are configured (health probes stay open)."""

    def __init__(self, app, keys: frozenset[str], metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics
        self.keys = tuple(k.encode("utf-8") for k in sorted(keys))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        given = presented_key(dict(scope["headers"]))
        if given is None or not key_matches(given, self.keys):
            self.metrics.on_refused("unauthorized")
            response = error_response(401, "unauthorized", "a valid API key is required: `Authorization: Bearer KEY` "
                                                           "or `X-API-Key: KEY`", {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class ShedLoad:
    """429 for a prediction that the queue would refuse anyway, before its body is read or parsed: under overload the
    cheapest refusal leaves the most CPU to the requests being served."""

    def __init__(self, app, service: "Service", metrics: ServiceMetrics):
        self.app, self.service, self.metrics = app, service, metrics

    async def __call__(self, scope, receive, send):
        batcher = self.service.batcher
        if scope["type"] == "http" and scope["path"] == PREDICT_PATH and batcher is not None:
            if (full := batcher.refusal(1)) is not None:
                self.metrics.on_refused("queue_full")
                return await queue_full_response(full)(scope, receive, send)
        return await self.app(scope, receive, send)


def queue_full_response(full: QueueFull, version: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(full.retry_after_s)))}
    if version is not None:
        headers[VERSION_HEADER] = version
    return error_response(429, "queue_full", str(full), headers)


class BodyGuard:
    """413 above max_bytes (Content-Length first; chunked bodies counted, never buffered past the limit) and 400
    for a body that is not UTF-8; the checked body is then handed to the app."""

    def __init__(self, app, max_bytes: int, metrics: ServiceMetrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def refuse(self, scope, receive, send, status: int, reason: str, error: str, detail: str):
        self.metrics.on_refused(reason)
        await error_response(status, error, detail)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the body is larger than {self.max_bytes} bytes (serve.max_body_bytes)"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await self.refuse(scope, receive, send, 400, "invalid_input", "bad_request",
                                         "Content-Length is not a number")
            if int(declared) > self.max_bytes:
                return await self.refuse(scope, receive, send, 413, "body_too_large", "body_too_large", too_large)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body arrived: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self.refuse(scope, receive, send, 413, "body_too_large", "body_too_large", too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return await self.refuse(scope, receive, send, 400, "invalid_input", "bad_encoding",
                                     f"the body is not UTF-8 (byte {exc.start})")
        handed = False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client goes

        await self.app(scope, replay, send)


# ---------------------------------------------------------------- the service's state

class ClientGone(Exception):
    """The client disconnected before its texts were scored."""


class ScoringTimeout(Exception):
    """Texts not scored within serve.request_timeout_s."""


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return when the client has disconnected (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class Service:
    """What one worker runs: the source, the held model, the batcher, the prediction log and the reload poll."""

    def __init__(self, settings: ServeSettings, project: Path, source: ModelSource, metrics: ServiceMetrics,
                 shadow_source: ModelSource | None = None):
        self.settings, self.project, self.source, self.metrics = settings, project, source, metrics
        self.shadow_source = shadow_source  # replaces the one serve.shadow names (tests)
        self.mirror: Mirror | None = None
        self.threads = thread_plan(settings, cores())[0]  # serve.threads, else cores // workers
        self.holder: ModelHolder | None = None
        self.batcher: MicroBatcher | None = None
        self.predlog: PredictionLog | None = None
        self.ready = False
        self._poll: asyncio.Task | None = None
        self.parity: dict[str, ParityOutcome] = {}  # version -> its certificate check on this host

    def vet(self, model: ServedModel, folder: Path) -> None:
        """Check a loaded version against its folder's parity certificate (texts one per call, as judged); record
        the outcome (metrics, /v2/models) and raise ParityError when serve.parity_action refuses it."""
        s = self.settings
        outcome = check_served(folder, model.info.model_sha256,
                               lambda texts: np.asarray([t.probabilities for t in model.score(texts, 1)]),
                               s.min_parity_agreement, s.parity_action)
        version = model.info.version
        self.parity[version] = outcome
        figures = outcome.report
        self.metrics.on_parity(version, outcome.status, figures.agreement if figures else None,
                               figures.max_prob_delta if figures else None)
        enforce(outcome, f"version {version}")
        if outcome.status == "passed":
            log.info("parity certificate of %s %s", version, outcome.detail)
        elif outcome.status == "no_certificate":
            log.warning("parity certificate of %s %s; serving it unchecked", version, outcome.detail)
        else:
            log.warning("parity certificate of %s FAILED; serving it anyway (serve.parity_action: warn): %s",
                        version, outcome.detail)

    async def start(self) -> None:
        s = self.settings
        resolved = await asyncio.to_thread(self.source.resolve)
        # scoring.load_served looked up now, as reload does: one place to replace it (tests).
        model = await asyncio.to_thread(scoring.load_served, resolved.folder, s.model_name, resolved.version,
                                        self.threads)
        try:
            await asyncio.to_thread(self.vet, model, resolved.folder)  # a refused version never starts serving
        except BaseException:
            model.close()
            raise
        self.holder = ModelHolder(model)
        log_dir = Path(s.log_dir) if Path(s.log_dir).is_absolute() else self.project / s.log_dir
        self.predlog = PredictionLog(log_dir, log_texts=s.log_texts, file_mb=s.log_file_mb, max_mb=s.log_max_mb,
                                     flush_seconds=s.log_flush_seconds)
        self.predlog.start()  # an unwritable serve.log_dir fails the start, before anything runs
        self.batcher = MicroBatcher(max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms,
                                    max_queue_texts=s.max_queue_texts, max_queue_wait_ms=s.max_queue_wait_ms,
                                    observer=self.metrics)
        await self.batcher.start()
        self.mirror = self.start_mirror()
        self.metrics.set_version(s.model_name, model.info.version)
        if s.reload_seconds > 0:
            self._poll = asyncio.create_task(self.poll_forever(), name="tunegate-reload-poll")
        self.ready = True
        log.info("serving %s version %s from %s (%d onnxruntime threads, batches of up to %d texts)",
                 s.model_name, model.info.version, self.source.description, self.threads, s.max_batch_size)

    def start_mirror(self) -> Mirror | None:
        """The shadow (serve.shadow) on its own thread, or None when off. It loads in that thread, after prod is
        ready: a shadow slow or unable to load never delays or fails the service's start."""
        s = self.settings
        if s.shadow is None:
            return None
        mirror = Mirror(lambda: self.shadow_source or source_for(s.shadow, self.project), share=s.shadow_share,
                        queue_texts=s.shadow_queue_texts, name=s.model_name, reload_seconds=s.reload_seconds,
                        prod_idle_s=self.batcher.idle_s, predlog=self.predlog, observer=self.metrics)
        mirror.start()
        return mirror

    async def stop(self) -> None:
        self.ready = False
        if self._poll is not None:
            self._poll.cancel()
            await asyncio.gather(self._poll, return_exceptions=True)
        if self.mirror is not None:  # before the log closes: what it scored is written
            await asyncio.to_thread(self.mirror.stop, self.settings.request_timeout_s)
        if self.batcher is not None:
            await self.batcher.stop()
        if self.predlog is not None:
            await asyncio.to_thread(self.predlog.close)
        if self.holder is not None:
            self.holder.current.close()
        self.metrics.close()

    async def reload(self) -> tuple[str, bool]:
        """Load the source's version now when it changed (swap + drain); the version served and whether it changed."""
        # Concurrent calls (the poll, POST .../load) run one after another inside reload_if_changed. A request
        # holds its version at most serve.request_timeout_s: the old version is drained by then.
        new = await reload_if_changed(self.source, self.holder, name=self.settings.model_name,
                                      threads=self.threads, drain_timeout_s=self.settings.request_timeout_s,
                                      vet=self.vet)
        if new is not None:
            self.metrics.set_version(self.settings.model_name, new)
            log.info("now serving %s version %s", self.settings.model_name, new)
        return self.holder.current.info.version, new is not None

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_seconds)
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - any failed poll keeps the current version serving
                self.metrics.on_reload_failed()
                log.warning("reload from %s failed; still serving %s: %s: %s", self.source.description,
                            self.holder.current.info.version, type(exc).__name__, exc)

    async def score(self, receive: Callable[[], Awaitable[dict]], model: ServedModel,
                    texts: list[str]) -> list[TextScore]:
        """Scores of `texts`, racing the client's disconnect and the request timeout (both cancel the texts not yet
        handed to the model). Raises QueueFull, ClientGone or ScoringTimeout."""
        scoring = asyncio.ensure_future(self.batcher.score(model, texts))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait({scoring, gone}, timeout=self.settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (scoring, gone):
                task.cancel()
            await asyncio.gather(scoring, gone, return_exceptions=True)
        if scoring in done:
            return scoring.result()
        raise ClientGone() if gone in done else ScoringTimeout()


async def offer_to_shadow(mirror: Mirror, version: str, texts: list[str], scores: list[TextScore],
                          labels: list[str]) -> None:
    """A background task (async, so Starlette runs it on the loop, not in a thread): Mirror.offer never blocks."""
    mirror.offer(version, texts, scores, labels)


# ---------------------------------------------------------------- the app

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 429, 503, 504)}


def create_app(settings: ServeSettings, project: Path, *, source: ModelSource | None = None,
               shadow_source: ModelSource | None = None) -> FastAPI:
    """The service for `settings` (serve.model and serve.log_dir relative to `project`); `source` replaces the
    one serve.model names, `shadow_source` the one serve.shadow names (tests, embedding)."""
    keys = api_keys(settings)
    metrics = ServiceMetrics()
    service = Service(settings, project, source or source_for(settings.model, project), metrics, shadow_source)
    PredictRequest = request_model(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not keys:
            log.warning("no API keys configured (serve.api_keys_file or %s): every endpoint is open to anyone who "
                        "can reach %s:%s", API_KEYS_ENV, settings.host, settings.port)
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # Outermost first: every request is timed; CORS preflights precede the key check; keys before the body is read.
    middleware = [Middleware(RequestMetrics, metrics=metrics, routes=lambda: app.routes)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "X-API-Key", "Content-Type"],
                                     expose_headers=[VERSION_HEADER, "Retry-After"]))
    middleware += [Middleware(RequireKey, keys=keys, metrics=metrics),
                   Middleware(ShedLoad, service=service, metrics=metrics),
                   Middleware(BodyGuard, max_bytes=settings.max_body_bytes, metrics=metrics)]
    # /docs would fetch a script from a CDN: off (the schema is at /openapi.json).
    app = FastAPI(title="tunegate serve", summary="Text classification by the served model (onnxruntime)",
                  lifespan=lifespan, middleware=middleware, docs_url=None, redoc_url=None)
    app.state.service = service
    name = settings.model_name

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.on_refused("invalid_input")
        return error_response(422, "invalid_input", explain_invalid(list(exc.errors()), settings))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                              dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return error_response(500, "internal", f"the service failed ({type(exc).__name__}); see its log")

    def unknown_model(asked: str) -> JSONResponse:
        return error_response(404, "not_found", f"no model {asked!r}: this service serves {name!r}")

    @app.get(LIVE_PATH, response_model=Health, tags=["health"])
    async def live() -> Health:
        """200 while the process runs."""
        return Health(status="live")

    @app.get(READY_PATH, response_model=Health, tags=["health"], responses={503: {"model": ErrorBody}})
    async def ready():
        """200 once the model has answered its warm-up call and the batcher runs; 503 before (and when stopping)."""
        if not service.ready:
            return error_response(503, "not_ready", "the model is loading (or the service is stopping)")
        return Health(status="ready")

    @app.get("/v2/models/{name}", response_model=ModelMetadata, tags=["models"],
             responses={k: ERRORS[k] for k in (401, 404)})
    async def model_metadata(name: str):
        """The served version: labels, max length, long-text rule, model hash, precision."""
        if name != settings.model_name:
            return unknown_model(name)
        info = service.holder.current.info
        return ModelMetadata(name=info.name, version=info.version, labels=info.labels, max_length=info.max_length,
                             long_text=info.long_text, model_sha256=info.model_sha256, precision=info.precision,
                             platform=PLATFORM, parity=parity.block() if (parity := service.parity.get(info.version))
                             else None)

    @app.post(PREDICT_PATH, response_model=PredictResponse, tags=["predict"],
              responses={k: ERRORS[k] for k in (400, 401, 413, 422, 429, 503, 504)})
    async def predict(body: PredictRequest, request: Request, response: Response,  # type: ignore[valid-type]
                      background: BackgroundTasks):
        """Label and class probabilities of each text, with the version that scored them (also in X-Model-Version)."""
        texts = body.texts
        with service.holder.acquire() as model:
            version = model.info.version
            try:
                scores = await service.score(request.receive, model, texts)
            except QueueFull as full:
                metrics.on_refused("queue_full")
                return queue_full_response(full, version)
            except ScoringTimeout:
                metrics.on_refused("timeout")
                return error_response(504, "timeout", f"not scored within {settings.request_timeout_s} s "
                                                      "(serve.request_timeout_s)")
            except BatcherStopped as stopping:
                return error_response(503, "stopping", str(stopping))
            except ClientGone:
                metrics.on_refused("disconnected")
                return error_response(CLIENT_CLOSED, "disconnected", "the client disconnected before its texts "
                                                                     "were scored")
        metrics.on_scored([s.label for s in scores])
        service.predlog.append(version, texts, scores, model.info.labels)
        metrics.on_log_dropped(service.predlog.dropped)
        if service.mirror is not None:
            # Run after the response has been sent: the shadow never sees a text before its client has prod's answer.
            background.add_task(offer_to_shadow, service.mirror, version, texts, scores, model.info.labels)
        response.headers[VERSION_HEADER] = version
        return PredictResponse(model_name=name, model_version=version, predictions=predictions(model.info.labels,
                                                                                              scores))

    @app.post("/v2/repository/models/{name}/load", response_model=LoadResponse, tags=["models"],
              responses={k: ERRORS[k] for k in (401, 404, 503)})
    async def load(name: str):
        """Load the source's current version now (warmed, swapped atomically, the old one drained)."""
        if name != settings.model_name:
            return unknown_model(name)
        try:
            version, changed = await service.reload()
        except TunegateError as exc:
            metrics.on_reload_failed()
            return error_response(503, "reload_failed", f"{exc} (still serving {service.holder.current.info.version})")
        return LoadResponse(model_name=name, model_version=version, changed=changed)

    @app.get("/metrics", tags=["metrics"], responses={200: {"content": {"text/plain": {}}}, 401: ERRORS[401]})
    async def prometheus() -> Response:
        """Prometheus text exposition (every worker's, with serve.workers > 1)."""
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    return app

