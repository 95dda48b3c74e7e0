"""The remediator's aiohttp app factory, and `serve`, which runs it behind a connection guard.

Tests, the bench and the CLI build the app the same way; the CLI serves it with `serve`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import resource
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from exporter.settings import ConfigError
from remediations.alertmanager import WebhookPayload
from remediations.backends import Backend
from remediations.config import RemediatorConfig
from remediations.engine import Remediator
from remediations.leader import HighAvailability, LeaderElector
from remediations.metrics import Metrics
from remediations.playbook import PlaybookFile, load_playbooks
from remediations.prom import Prometheus
from remediations.state import AuditEntry, State, StateError

log = logging.getLogger("remediations")

config_key = web.AppKey("config", RemediatorConfig)
metrics_key = web.AppKey("metrics", Metrics)
remediator_key = web.AppKey("remediator", Remediator)
token_key = web.AppKey("token", bytes)
# Connections that have not sent a complete request head yet (see ConnectionGuard).
awaiting_head_key: web.AppKey[set[Any]] = web.AppKey("awaiting_head")
throttle_key: web.AppKey[LogThrottle] = web.AppKey("throttle")

# File descriptors kept free for everything that is not a client connection: the state file,
# the local backend's replica logs, the Prometheus and Kubernetes clients.
RESERVED_FDS = 64
# The listen backlog, which is also how many connections asyncio accepts in one go: a closed
# connection frees its descriptor only on the next loop turn, so a burst needs this many spare.
BACKLOG = 64

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_backend(cfg: RemediatorConfig) -> Backend:
    if cfg.backend == "local":
        from remediations.backends.local import LocalBackend

        assert cfg.local is not None  # the config validator guarantees it
        return LocalBackend(cfg.local)
    from remediations.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(cfg.kubernetes, cfg.namespaces)


def open_state(cfg: RemediatorConfig) -> State:
    """The SQLite file; under leader election, with the facts that must survive failover kept
    on the cluster (ClusterState; the ConfigMap beside the Lease holds the flags)."""
    if not cfg.leader_election.enabled:
        return State(cfg.state, audit_max_entries=cfg.audit_max_entries)
    from remediations.cluster_state import ClusterState

    election = cfg.leader_election
    return ClusterState(
        cfg.state,
        audit_max_entries=cfg.audit_max_entries,
        namespace=election.lease_namespace,
        config_map=f"{election.lease_name}-state",
    )


def start_leader_election(
    cfg: RemediatorConfig, backend: Backend, metrics: Metrics, state: State
) -> HighAvailability | None:
    """With `leader_election.enabled`, start campaigning for the Lease (kubernetes backend)."""
    if not cfg.leader_election.enabled:
        return None
    from remediations.backends.kubernetes import KubernetesBackend
    from remediations.cluster_state import ClusterState

    if not isinstance(backend, KubernetesBackend) or not isinstance(state, ClusterState):
        raise ConfigError("leader_election needs the kubernetes backend")

    def changed(leading: bool) -> None:
        metrics.leader.set(int(leading))
        metrics.leader_transitions.inc()

    def failed(where: str, what: str) -> None:
        metrics.errors.labels(where).inc()
        log.error("%s: %s", where, what)

    elector = LeaderElector(cfg.leader_election, backend.api_client, on_change=changed)
    state.bind(backend, elector.identity, lambda: elector.leading, failed)
    elector.start()
    return HighAvailability(elector, state)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(request: web.Request) -> bool:
    """Constant-time comparison of the bearer token, so timing reveals nothing about it."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode(), request.app[token_key])


def _unauthorized() -> web.Response:
    resp = _error(401, "missing or wrong bearer token")
    resp.headers["WWW-Authenticate"] = 'Bearer realm="inferwatch-remediator"'
    return resp


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return (
        "not an Alertmanager v4 webhook payload: "
        + "; ".join(parts)
        + (f"; and {more} more" if more > 0 else "")
    )


async def post_alerts(request: web.Request) -> web.Response:
    """Validate and queue; the work happens on the workers. 4xx are final, 5xx are retried."""
    resp = await _accept(request)
    request.app[metrics_key].webhook_requests.labels(str(resp.status)).inc()
    return resp


class LogThrottle:
    """At most one log line per kind every `every` seconds, saying how many it stands for: a
    flood of hostile connections must not become a flood of log lines."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) < self.every:
            self._folded[kind] = self._folded.get(kind, 0) + 1
            return
        self._last[kind] = now
        folded = self._folded.pop(kind, 0)
        if folded:
            message += f" (and {folded} more like it in the last {self.every:g}s)"
        log.warning(message, *args)


class BodyError(Exception):
    """The body could not be read; `response` says why to the client (if it is still there)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


async def read_body(request: web.Request) -> bytes:
    """The whole body, within `max_body_bytes` and `client_timeout_seconds`.

    A client that trickles its body (or stops sending it) is cut off with 408, one that goes away
    mid-body is noted: each costs one counter increment and at most one log line per 10 s.
    """
    cfg = request.app[config_key]
    limit = cfg.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(_error(413, f"body larger than {limit} bytes"))
    closed = request.app[metrics_key].connections_closed
    throttle = request.app[throttle_key]
    try:
        async with asyncio.timeout(cfg.client_timeout_seconds):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(_error(413, f"body larger than {limit} bytes")) from None
    except TimeoutError:
        closed.labels("body_timeout").inc()
        throttle.warning(
            "body_timeout",
            "closed a connection from %s: its body did not arrive within %gs",
            request.remote,
            cfg.client_timeout_seconds,
        )
        resp = _error(408, f"the body did not arrive within {cfg.client_timeout_seconds:g}s")
        resp.force_close()
        raise BodyError(resp) from None
    except ConnectionError:
        closed.labels("client_disconnect").inc()
        throttle.warning(
            "client_disconnect", "a client (%s) went away while sending its body", request.remote
        )
        # nginx's "client closed request": nobody reads it, the counter by code shows it.
        raise BodyError(_error(499, "client closed the connection mid-body")) from None


def parse_json(body: bytes) -> Any:
    """JSON, or ValueError with a clear message (deep nesting included: never a 500)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("body is not JSON we accept: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None


async def _accept(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    try:
        data = parse_json(await read_body(request))
    except BodyError as exc:
        return exc.response
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        return _error(400, _validation_message(exc))
    if payload.truncatedAlerts:
        log.warning(
            "Alertmanager truncated %d alerts (max_alerts); group the remediation route finer",
            payload.truncatedAlerts,
        )
    remediator = request.app[remediator_key]
    if not remediator.submit(payload.alerts):
        reason = "shutting down" if not remediator.accepting else "queue full"
        return _error(503, f"{reason}; retry later")
    return web.json_response({"accepted": len(payload.alerts)}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[metrics_key].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _entry(e: AuditEntry) -> dict[str, str]:
    return {
        "time": _rfc3339(e.time),
        "alertname": e.alertname,
        "fingerprint": e.fingerprint,
        "action": e.action,
        "target": e.target,
    }


async def actions(request: web.Request) -> web.Response:
    """The audit log of finished actions, newest first (`?limit=N`, default 100, at most 10000).

    `result` is always one of succeeded, failed, dry_run, blocked: actions still running are
    listed apart under `in_progress` (without a result) and join `actions` once they finish.
    The audit log names targets and alerts, so it needs the token like every other endpoint
    except /healthz and /metrics.
    """
    if not _authorized(request):
        return _unauthorized()
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 10000)
    except ValueError:
        return _error(400, "limit must be an integer")
    state = request.app[remediator_key].state
    return web.json_response(
        {
            "actions": [
                {**_entry(e), "result": e.result or "", "reason": e.reason}
                for e in state.recent(limit, finished=True)
            ],
            "in_progress": [
                {**_entry(e), "plan": e.reason.removeprefix("in progress: ")}
                for e in state.in_progress()
            ],
        }
    )


async def circuit_reset(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    remediator = request.app[remediator_key]
    remediator.reset_circuit()
    try:
        await remediator.settle()
    except StateError as exc:
        return _error(503, f"reset here, not yet shared with the other replicas: {exc}")
    return web.json_response({"circuit_open": False})


async def killswitch(request: web.Request) -> web.Response:
    """Body {"enabled": true|false}; without a body, report the current state."""
    if not _authorized(request):
        return _unauthorized()
    remediator = request.app[remediator_key]
    try:
        body = await read_body(request)
    except BodyError as exc:
        return exc.response
    if body.strip():
        try:
            data: Any = parse_json(body)
        except ValueError:
            return _error(400, 'body must be JSON: {"enabled": true|false}')
        if not isinstance(data, dict) or not isinstance(data.get("enabled"), bool):
            return _error(400, 'body must be {"enabled": true|false}')
        remediator.set_kill_switch(data["enabled"])
        try:
            await remediator.settle()
        except StateError as exc:
            return _error(503, f"set here, not yet shared with the other replicas: {exc}")
    return web.json_response({"kill_switch": remediator.kill_switch})


def create_app(
    cfg: RemediatorConfig,
    *,
    token: str,
    playbooks: PlaybookFile | None = None,
    backend: Backend | None = None,
) -> web.Application:
    """`backend` may be passed in (the demo and tests build their own); otherwise from cfg.

    The state file is opened (and checked, and migrated) here, before anything starts: a damaged,
    read-only or locked one raises StateError, and no replica is started for nothing.
    """
    playbook_file = playbooks if playbooks is not None else load_playbooks(cfg.playbooks)
    the_backend = backend if backend is not None else make_backend(cfg)
    if cfg.leader_election.enabled and the_backend.name != "kubernetes":
        raise ConfigError("leader_election needs the kubernetes backend")
    state = open_state(cfg)
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[_note_request])
    app[config_key] = cfg
    app[metrics_key] = Metrics()
    app[token_key] = token.encode()
    app[awaiting_head_key] = set()
    app[throttle_key] = LogThrottle()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            prometheus = (
                Prometheus(session, cfg.prometheus.url, cfg.prometheus.timeout_seconds)
                if cfg.prometheus.url
                else None
            )
            await the_backend.start()
            ha = start_leader_election(cfg, the_backend, app[metrics_key], state)
            remediator = Remediator(
                cfg, playbook_file, state, the_backend, prometheus, app[metrics_key], ha=ha
            )
            app[remediator_key] = remediator
            remediator.start()
            log.info(
                "remediator ready: backend %s, %d playbooks%s",
                the_backend.name,
                len(playbook_file.playbooks),
                ", DRY-RUN" if cfg.dry_run else "",
            )
            try:
                yield
            finally:
                # Graceful drain: stop taking alerts, let queued ones finish, then stop.
                await remediator.stop(cfg.shutdown_timeout_seconds)
                if ha is not None:  # after the queue drained: hand the Lease over
                    await ha.state.unbind(cfg.leader_election.renew_deadline_seconds)
                    await ha.elector.stop()
                await the_backend.close()
                state.close()

    app.cleanup_ctx.append(engine_ctx)
    app.router.add_post("/alerts", post_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/actions", actions)
    app.router.add_post("/circuit/reset", circuit_reset)
    app.router.add_post("/killswitch", killswitch)
    return app


@web.middleware
async def _note_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The connection sent a complete request head: no longer subject to its deadline."""
    request.app[awaiting_head_key].discard(request.protocol)
    return await handler(request)


class ConnectionGuard:
    """The protocol factory the listener uses: it bounds what slow or idle clients can hold.

    aiohttp reads request heads without a deadline of its own, and every open connection holds a
    file descriptor: 300 clients sending one header byte a minute used to exhaust them, so that
    /healthz and POST /alerts went unanswered and asyncio logged every failed accept. Here a
    connection that has not sent a complete request head within `client_timeout_seconds` is
    closed, and at `limit` open connections the oldest one is closed to admit the new one (a
    slow attacker's connection is the oldest; Alertmanager's requests take milliseconds).
    Idle keep-alive connections are closed by aiohttp's keepalive_timeout.
    """

    def __init__(self, app: web.Application, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.timeout = app[config_key].client_timeout_seconds
        self.awaiting_head = app[awaiting_head_key]
        self.closed = app[metrics_key].connections_closed
        self.throttle = app[throttle_key]

    def __call__(self) -> Any:
        connections = self.server.connections  # oldest first; closed ones leave next tick
        open_now = [c for c in connections if c.transport is not None]
        if len(open_now) >= self.limit:
            oldest = open_now[0]
            self.closed.labels("connection_limit").inc()
            self.throttle.warning(
                "connection_limit",
                "%d connections open (limit %d): closed the oldest one, from %s",
                len(open_now),
                self.limit,
                oldest.peername,
            )
            oldest.force_close()
        handler = self.server()
        self.awaiting_head.add(handler)
        asyncio.get_running_loop().call_later(self.timeout, self._expire, handler)
        return handler

    def _expire(self, handler: Any) -> None:
        if handler not in self.awaiting_head:
            return
        self.awaiting_head.discard(handler)
        if handler.transport is None:
            return
        self.closed.labels("header_timeout").inc()
        self.throttle.warning(
            "header_timeout",
            "closed a connection from %s: no complete request head within %gs",
            handler.peername,
            self.timeout,
        )
        handler.force_close()


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites listen through a ConnectionGuard."""

    def __init__(self, app: web.Application, limit: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limit = limit
        self._guard: ConnectionGuard | None = None

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        if self._guard is None or self._guard.server is not inner:
            self._guard = ConnectionGuard(self.app, inner, self._limit)
        return self._guard


def connection_limit(cfg: RemediatorConfig) -> int:
    """`max_connections`, lowered to what the file descriptor limit allows.

    The soft limit is raised towards the hard one first (as Go programs do), then RESERVED_FDS
    are kept for everything else and BACKLOG for a burst of accepts.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = RESERVED_FDS + BACKLOG
    wanted = cfg.max_connections + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return cfg.max_connections
    limit = max(soft - spare, 1)
    log.warning(
        "only %d file descriptors (ulimit -n): serving at most %d connections, not %d",
        soft,
        limit,
        cfg.max_connections,
    )
    return limit


async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully (the queue drains first)."""
    cfg = app[config_key]
    runner = GuardedRunner(
        app,
        connection_limit(cfg),
        access_log=None,
        keepalive_timeout=cfg.keepalive_timeout_seconds,
        handle_signals=False,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    throttle = app[throttle_key]

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio logs every failed accept (with a traceback) when descriptors run out.
        if context.get("message") == "socket.accept() out of system resource":
            throttle.warning("accept", "cannot accept connections: %s", context.get("exception"))
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_loop_error)
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=ssl_context, backlog=BACKLOG)
        await site.start()
        await stop.wait()
        log.info("stopping: draining the queue (up to %gs)", cfg.shutdown_timeout_seconds)
    finally:
        await runner.cleanup()
