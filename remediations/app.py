"""The remediator's aiohttp app factory. Tests, the bench and the CLI build it the same way."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from remediations.alertmanager import WebhookPayload
from remediations.backends import Backend
from remediations.config import RemediatorConfig
from remediations.engine import Remediator
from remediations.metrics import Metrics
from remediations.playbook import PlaybookFile, load_playbooks
from remediations.prom import Prometheus
from remediations.state import AuditEntry, State

log = logging.getLogger("remediations")

config_key = web.AppKey("config", RemediatorConfig)
metrics_key = web.AppKey("metrics", Metrics)
remediator_key = web.AppKey("remediator", Remediator)
token_key = web.AppKey("token", bytes)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_backend(cfg: RemediatorConfig) -> Backend:
    if cfg.backend == "local":
        from remediations.backends.local import LocalBackend

        assert cfg.local is not None  # the config validator guarantees it
        return LocalBackend(cfg.local)
    from remediations.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(cfg.kubernetes, cfg.namespaces)


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


async def _accept(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    limit = request.app[config_key].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"body larger than {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body larger than {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body is not JSON: {exc}")
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
    """
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
    request.app[remediator_key].reset_circuit()
    return web.json_response({"circuit_open": False})


async def killswitch(request: web.Request) -> web.Response:
    """Body {"enabled": true|false}; without a body, report the current state."""
    if not _authorized(request):
        return _unauthorized()
    remediator = request.app[remediator_key]
    body = await request.read()
    if body.strip():
        try:
            data: Any = json.loads(body)
        except ValueError:
            return _error(400, 'body must be JSON: {"enabled": true|false}')
        if not isinstance(data, dict) or not isinstance(data.get("enabled"), bool):
            return _error(400, 'body must be {"enabled": true|false}')
        remediator.set_kill_switch(data["enabled"])
    return web.json_response({"kill_switch": remediator.kill_switch})


def create_app(
    cfg: RemediatorConfig,
    *,
    token: str,
    playbooks: PlaybookFile | None = None,
    backend: Backend | None = None,
) -> web.Application:
    """`backend` may be passed in (the demo and tests build their own); otherwise from cfg."""
    playbook_file = playbooks if playbooks is not None else load_playbooks(cfg.playbooks)
    the_backend = backend if backend is not None else make_backend(cfg)
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[config_key] = cfg
    app[metrics_key] = Metrics()
    app[token_key] = token.encode()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        state = State(cfg.state, audit_max_entries=cfg.audit_max_entries)
        async with aiohttp.ClientSession() as session:
            prometheus = (
                Prometheus(session, cfg.prometheus.url, cfg.prometheus.timeout_seconds)
                if cfg.prometheus.url
                else None
            )
            await the_backend.start()
            remediator = Remediator(
                cfg, playbook_file, state, the_backend, prometheus, app[metrics_key]
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
