"""The REST gateway: the seeds' JSON API and the web page, in front of the local Triton (gRPC).

    app = create_app("127.0.0.1:8001", auth_token=None)      # a Starlette ASGI app
    uvicorn.run(app, host="0.0.0.0", port=8080)

Routes:
    POST /  and  POST /segment   segmentation request (server/rest.py: fields, validation, responses)
    GET  /                       the web page for browsers (Accept: text/html), else a JSON index
    GET  /health                 200 {"status": "ready"} when Triton and model `sam3` are ready, else 503;
                                 with a watchdog (server/watchdog.py): its real checks of every model
    GET  /metrics                Prometheus text: responses by status, requests cancelled, watchdog counters
    GET  /openapi.json, /docs    schema and field table (generated from server.rest.FIELDS)
    GET  /web/*                  the page's static files (server/web/)

Errors are JSON ``{"error": "..."}``: 400 / 413 / 422 for bad requests, 401 without the bearer
token (when ``auth_token`` is set; /health, /metrics, the page and the schema stay open); 503 with
``Retry-After`` when Triton is unreachable, at capacity or healing a stage; 504 when it does not
answer within ``timeout_s``; 502 (with ``error_id``) for any other model-server failure. Messages
never carry tracebacks or file paths (server/failures.py); the log has the details under the id.
Inference goes through client.api.Sam3Client with cancellable gRPC calls (server/inference.py):
when the client disconnects, the request is cancelled in Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from client.api import Sam3Error
from server import failures, openapi, rest
from server.inference import CancellableClient, Ticket
from server.watchdog import ORCHESTRATOR, SERVER

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_WORKERS = 64  # threads (each with its own gRPC connection) that wait on Triton calls
log = logging.getLogger("sam3.gateway")


def error_response(status: int, message: str, headers: dict | None = None, error_id: str | None = None) -> JSONResponse:
    """``{"error": message}`` (+ ``"error_id"``) with ``status``."""
    body = {"error": message} if error_id is None else {"error": message, "error_id": error_id}
    return JSONResponse(body, status_code=status, headers=headers)


class Gateway:
    """Request handlers bound to one Triton gRPC address (the client is created on first use).

    watchdog: a started server.watchdog.Watchdog (or None): /health reports its checks, requests
    get 503 + Retry-After while it heals a stage, and failures naming a dead stub wake it.
    """

    def __init__(
        self,
        grpc_url: str,
        auth_token: str | None,
        max_body_bytes: int,
        timeout_s: float,
        watchdog=None,
        max_inflight: int = 256,
    ):
        self.grpc_url, self.auth_token = grpc_url, (auth_token.strip() if auth_token else None)
        self.max_body_bytes, self.timeout_s = int(max_body_bytes), float(timeout_s)
        self.max_inflight, self.inflight = int(max_inflight), 0
        self.watchdog = watchdog
        self._client, self._lock = None, threading.Lock()
        self._workers = ThreadPoolExecutor(min(MAX_WORKERS, self.max_inflight), thread_name_prefix="triton-call")
        self.counts: Counter = Counter()
        self._inflight: set = set()
        if watchdog is not None:
            watchdog.on_incident(self._abandon_doomed)

    @property
    def client(self) -> CancellableClient:
        """The shared Sam3Client (gRPC, cancellable calls); thread safe, one connection per worker thread."""
        with self._lock:
            if self._client is None:
                self._client = CancellableClient(self.grpc_url, timeout_s=self.timeout_s)
            return self._client

    def close(self) -> None:
        """Close the gateway's connections to Triton (at shutdown: Triton waits for open connections)."""
        self._workers.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- routes
    async def segment(self, request: Request) -> Response:
        """POST / and /segment: auth → body (size-limited) → validate → Triton → seeds' JSON.

        At most ``max_inflight`` requests at once (event-loop counter); beyond, 503 + Retry-After at once.
        """
        if self.inflight >= self.max_inflight:
            response = error_response(
                503,
                f"the gateway is at capacity ({self.max_inflight} requests in progress); "
                f"retry in {failures.OVERLOAD_RETRY_S} s",
                {"Retry-After": str(failures.OVERLOAD_RETRY_S)},
            )
        else:
            self.inflight += 1
            try:
                response = await self._segment(request)
            finally:
                self.inflight -= 1
        self.counts[response.status_code] += 1
        return response

    async def _segment(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            raw = await self._read_body(request)
            req = await run_in_threadpool(lambda: rest.validate(rest.parse_body(raw)))
            if self.watchdog is not None and not self.watchdog.ready:
                return self._unavailable_response()
            return await self._infer(request, req)
        except rest.RestError as err:
            return error_response(err.status, err.message, _auth_header(err.status))
        except ClientDisconnect:
            return error_response(400, "the client disconnected before sending the whole body")

    async def _infer(self, request: Request, req) -> Response:
        """Run the request in Triton; cancel it there if the client disconnects first."""
        start, ticket = time.monotonic(), Ticket()
        run = functools.partial(self.client.segment_cancellable, ticket, req.image, req.triton_mode, **req.fields)
        call = asyncio.get_running_loop().run_in_executor(self._workers, run)
        with self._lock:
            self._inflight.add(ticket)
        try:
            left = await _client_left(request, call)
        finally:
            with self._lock:
                self._inflight.discard(ticket)
        if left:
            ticket.cancel()
            call.add_done_callback(_consume)  # its Sam3Error (cancelled) is expected; nobody awaits it
            self.counts["cancelled"] += 1
            log.info("client of a %s request disconnected: cancelled in Triton", req.mode)
            return error_response(499, "the client disconnected; the request was cancelled")
        if ticket.doomed:
            _consume(call)  # the cancelled call's error is expected
            return self._unavailable_response()
        try:
            seg = call.result()
        except Sam3Error as err:
            return await run_in_threadpool(self._triton_error, err, req.mode, start)
        body = await run_in_threadpool(rest.format_response, req, seg)
        log.info("segment mode=%s detections=%d %.0f ms", req.mode, len(seg), 1e3 * (time.monotonic() - start))
        return Response(body, media_type="application/json")

    def _abandon_doomed(self, broken: dict) -> None:
        """Watchdog incident: when the orchestrator or tritonserver itself died, the requests in flight
        can only fail (Triton fails those queued on a dead stub one by one, ~1 s each): cancel them
        now so their clients get 503 + Retry-After at once."""
        if ORCHESTRATOR not in broken and SERVER not in broken:
            return
        with self._lock:
            doomed = list(self._inflight)
        for ticket in doomed:
            ticket.doomed = True
            ticket.cancel()
        if doomed:
            log.warning("cancelled %d request(s) in flight on the failed %s", len(doomed), ", ".join(broken))

    def _unavailable_response(self) -> Response:
        wait = self.watchdog.retry_after_s()
        broken = ", ".join(self.watchdog.status()["broken"]) or "a stage"
        return error_response(
            503, f"the model server is recovering ({broken}); retry in {wait} s", {"Retry-After": str(wait)}
        )

    def _triton_error(self, err, mode: str, started: float) -> Response:
        """Sam3Error → 400 (bad input, in this API's names), 503 + Retry-After, 504, or 502 with an error id."""
        if err.status == 400:
            return error_response(400, failures.public_message(rest.server_message(err.message, mode)))
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.report_failure(err.message)
        recovering = watchdog is not None and (
            watchdog.unsettled_since(started) or watchdog.status(live=True)["status"] != "ready"
        )
        failure = failures.classify(
            err.status, err.message, recovering, watchdog.retry_after_s() if watchdog is not None else 5
        )
        error_id = failures.new_error_id()
        log.error("model server error %s (id %s): %s", err.status, error_id, err.message)
        headers = {"Retry-After": str(failure.retry_after_s)} if failure.retry_after_s else None
        return error_response(failure.status, failure.message, headers, error_id)

    async def root(self, request: Request) -> Response:
        """GET /: the web page for browsers, a JSON index for API clients."""
        if _prefers_html(request.headers.get("accept", "")):
            return FileResponse(WEB_DIR / "index.html", media_type="text/html")
        return JSONResponse(
            {
                "service": "SAM3 REST gateway",
                "segment": "POST / or POST /segment (JSON)",
                "schema": "/openapi.json",
                "docs": "/docs",
                "health": "/health",
            }
        )

    async def health(self, request: Request) -> Response:
        """GET /health: 200 when Triton and the `sam3` model are ready, else 503 with the reason.

        With a watchdog, "ready" also needs every model to pass its real checks (a live re-check:
        process table and repository index); else 503 with the broken models and Retry-After.
        """
        if self.watchdog is not None:
            state = await run_in_threadpool(self.watchdog.status, True)
            state["broken"] = {m: failures.public_message(why) for m, why in state["broken"].items()}
            if state["status"] != "ready":
                wait = str(self.watchdog.retry_after_s())
                return JSONResponse(state, status_code=503, headers={"Retry-After": wait})
        try:
            ready = await run_in_threadpool(self.client.is_ready)
        except Sam3Error as err:
            return JSONResponse(
                {"status": "unavailable", "error": failures.public_message(err.message)}, status_code=503
            )
        if not ready:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "error": f"Triton at {self.grpc_url} or model `sam3` is not ready yet (still loading?)",
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready"})

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: Prometheus text (gateway responses by status, cancellations, watchdog counters)."""
        lines = [
            "# HELP sam3_gateway_inflight segmentation requests in progress",
            "# TYPE sam3_gateway_inflight gauge",
            f"sam3_gateway_inflight {self.inflight}",
            "# HELP sam3_gateway_responses_total segmentation responses by HTTP status (cancelled: client left)",
            "# TYPE sam3_gateway_responses_total counter",
        ]
        lines += [f'sam3_gateway_responses_total{{status="{k}"}} {n}' for k, n in sorted(self.counts.items(), key=str)]
        text = "\n".join(lines) + "\n" + (self.watchdog.metrics_text() if self.watchdog is not None else "")
        return Response(text, media_type="text/plain; version=0.0.4")

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(openapi.openapi_schema(self.max_body_bytes))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(openapi.docs_html())

    # ---- steps
    def _check_auth(self, request: Request) -> None:
        """401 unless ``Authorization: Bearer <auth_token>`` (when a token is configured)."""
        if self.auth_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.auth_token.encode()):
            raise rest.RestError(401, "missing or wrong token: send the header `Authorization: Bearer <token>`")

    async def _read_body(self, request: Request) -> bytes:
        """The body, at most ``max_body_bytes`` (checked on Content-Length and on the bytes streamed)."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _drain(request, 2 * limit)
            raise rest.RestError(413, _too_large(int(declared), limit))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request, limit)
                raise rest.RestError(413, _too_large(size, limit))
            chunks.append(chunk)
        return b"".join(chunks)


async def _drain(request: Request, budget: int) -> None:
    """Read and drop up to ``budget`` more body bytes so the client can read the 413 (then stop)."""
    try:
        async for chunk in request.stream():
            budget -= len(chunk)
            if budget < 0:
                return
    except (RuntimeError, ClientDisconnect):  # already consumed, or the client gave up
        return


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body is {size} bytes, over the {limit}-byte limit: send a smaller image "
        "(downscale or JPEG-compress it)"
    )


async def _client_left(request: Request, call: asyncio.Future) -> bool:
    """Wait for ``call``; True when the client disconnected first (the body is already read)."""
    left = asyncio.ensure_future(_disconnect(request))
    done, _ = await asyncio.wait({call, left}, return_when=asyncio.FIRST_COMPLETED)
    left.cancel()
    return call not in done


def _consume(future: asyncio.Future) -> None:
    """Retrieve a finished future's exception so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()


async def _disconnect(request: Request) -> None:
    """Return when the ASGI server reports that the client went away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _auth_header(status: int) -> dict | None:
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


def _prefers_html(accept: str) -> bool:
    """True when Accept names text/html with a quality at least that of application/json (browsers)."""
    quality = _qualities(accept)
    html = quality.get("text/html", 0.0)
    return html > 0 and html >= quality.get("application/json", 0.0)


def _qualities(accept: str) -> dict[str, float]:
    """{media type: q} of an Accept header ("text/html,*/*;q=0.8" → {"text/html": 1.0, "*/*": 0.8})."""
    found = {}
    for part in accept.lower().split(","):
        media, _, params = part.partition(";")
        q = re.search(r"q=([0-9]*\.?[0-9]+)", params)
        found[media.strip()] = float(q.group(1)) if q else 1.0
    return found


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(
        exc.status_code,
        f"{exc.detail}: {request.method} {request.url.path} (see GET /docs for the routes)",
        getattr(exc, "headers", None),
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    error_id = failures.new_error_id()
    log.exception("gateway error %s on %s %s", error_id, request.method, request.url.path)
    return error_response(
        500, f"internal gateway error (error id {error_id}); the server log has the details", error_id=error_id
    )


def create_app(
    grpc_url: str,
    auth_token: str | None = None,
    max_body_bytes: int = 30 * 2**20,
    timeout_s: float = 300.0,
    cors_origins: tuple = ("*",),
    watchdog=None,
    max_inflight: int = 256,
):
    """The gateway ASGI app for Triton at ``grpc_url`` ("host:port").

    auth_token: when set, POST routes need ``Authorization: Bearer <auth_token>``.
    max_body_bytes: larger bodies get 413. timeout_s: per-request limit of the Triton call (504 after).
    cors_origins: origins allowed to call the API from a browser (() = same origin only).
    watchdog: a started server.watchdog.Watchdog whose checks /health reports (None: Triton's ready).
    max_inflight: segmentation requests served at once; more get 503 + Retry-After (load shedding).
    """
    if max_body_bytes <= 0 or timeout_s <= 0 or max_inflight <= 0:
        raise ValueError(
            f"max_body_bytes, timeout_s and max_inflight must be > 0; got {max_body_bytes}, {timeout_s}, {max_inflight}"
        )
    if auth_token is not None and not auth_token.strip():
        raise ValueError("auth_token is empty: pass None for no authentication, or a non-empty secret")
    gateway = Gateway(grpc_url, auth_token, max_body_bytes, timeout_s, watchdog, max_inflight)
    routes = [
        Route("/", gateway.root, methods=["GET"]),
        Route("/", gateway.segment, methods=["POST"]),
        Route("/segment", gateway.segment, methods=["POST"]),
        Route("/health", gateway.health),
        Route("/metrics", gateway.metrics),
        Route("/openapi.json", gateway.openapi_json),
        Route("/docs", gateway.docs),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
    ]
    middleware = (
        [
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        ]
        if cors_origins
        else []
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        gateway.close()

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.gateway = gateway
    return app


class BackgroundServer:
    """uvicorn serving an ASGI app from a daemon thread (tests, ``sam3-triton serve``).

    ``port=0`` picks a free port; ``url`` is known once :meth:`start` returns. :meth:`stop`
    closes the listening socket at once and lets requests in flight finish for up to
    ``drain_s`` seconds.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", drain_s: float = 30.0):
        self.drain_s = drain_s
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=max(1, round(drain_s))
            )
        )
        self.thread = threading.Thread(target=self._run, daemon=True, name="gateway")
        self.host = host

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn's answer to a port it cannot bind (it logged why); start() reports it
            pass

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():  # uvicorn exits its thread when it cannot bind
                raise RuntimeError(
                    f"the gateway could not start on {self.host}:{self.server.config.port} (port in use?)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {self.host} within {timeout_s:g} s")
            time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop accepting, drain requests in flight (up to ``drain_s``), then return."""
        self.server.should_exit = True
        self.thread.join(self.drain_s + 5 if timeout_s is None else timeout_s)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
