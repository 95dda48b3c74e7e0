"""The exporter's aiohttp app factory. Tests build the app with the same factory."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter import __version__
from exporter.collectors import build_collectors
from exporter.collectors.base import CollectorContext
from exporter.config import ExporterConfig
from exporter.engines.fetch import engine_connector
from exporter.nvml import Nvml
from exporter.scheduler import Scheduler
from exporter.snapshot import OPENMETRICS_CONTENT_TYPE, PLAIN_CONTENT_TYPE, SnapshotStore

log = logging.getLogger(__name__)

config_key = web.AppKey("config", ExporterConfig)
store_key = web.AppKey("store", SnapshotStore)
http_key = web.AppKey("http", aiohttp.ClientSession)
nvml_key = web.AppKey("nvml", Nvml)
scheduler_key = web.AppKey("scheduler", Scheduler)

INDEX_HTML = """<!doctype html><html><head><title>Inferwatch exporter</title></head><body>
<h1>Inferwatch exporter {version}</h1>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul>
<p>Collectors: {collectors}</p></body></html>
"""


def negotiate(accept: str, accept_encoding: str) -> tuple[bool, bool]:
    """(OpenMetrics?, gzip?) as client_python negotiates them for its own /metrics."""
    _, content_type = choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text"), gzip_accepted(accept_encoding)


async def metrics(request: web.Request) -> web.Response:
    """Serve cached bytes: negotiated format and encoding, never any collection work."""
    store = request.app[store_key]
    openmetrics, gzipped = negotiate(
        request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
    )
    body = store.exposition(openmetrics=openmetrics, gzipped=gzipped)
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else PLAIN_CONTENT_TYPE}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    store = request.app[store_key]
    pending = [name for name, s in store.status.items() if not s.completed]
    if pending:
        return web.Response(status=503, text=f"waiting for first refresh: {', '.join(pending)}\n")
    return web.Response(text="ready\n")


async def index(request: web.Request) -> web.Response:
    names = ", ".join(request.app[store_key].status) or "none"
    html = INDEX_HTML.format(version=__version__, collectors=names)
    return web.Response(text=html, content_type="text/html")


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(connector=engine_connector()) as session:
        app[http_key] = session
        yield


async def nvml_ctx(app: web.Application) -> AsyncIterator[None]:
    app[nvml_key] = nvml = Nvml()
    app[store_key].sources.append(nvml.error_families)
    yield
    nvml.close()


# Collectors parse and encode on their own threads while the event loop answers scrapes; CPython
# hands the GIL to a waiting thread only every switch interval (5 ms by default), so each step
# of serving /metrics could wait that long behind a parse. 1 ms keeps /metrics prompt.
GIL_SWITCH_INTERVAL_SECONDS = 0.001


async def gil_ctx(app: web.Application) -> AsyncIterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, GIL_SWITCH_INTERVAL_SECONDS))
    yield
    sys.setswitchinterval(previous)


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[config_key]
    context = CollectorContext(
        http=app[http_key], nvml=app[nvml_key], proc_root=cfg.proc_root, log_root=cfg.log_root
    )
    scheduler = Scheduler(build_collectors(cfg, context), app[store_key])
    app[scheduler_key] = scheduler
    await scheduler.start()
    log.info("collectors started: %s", ", ".join(c.name for c in scheduler.collectors) or "none")
    yield
    await scheduler.stop()


def create_app(cfg: ExporterConfig) -> web.Application:
    """Wire routes and resources; simulation (if asked) starts before any collector."""
    contexts: list[Any] = [http_ctx]
    simulation = None
    if cfg.simulate:
        from exporter.simulate import Simulation

        simulation = Simulation.from_name(cfg.simulate)
        cfg = simulation.configure(cfg)
        contexts.append(simulation.context)
    contexts += [gil_ctx, nvml_ctx, scheduler_ctx]

    app = web.Application()
    app[config_key] = cfg
    app[store_key] = SnapshotStore(cfg.enabled_collectors())
    app.cleanup_ctx.extend(contexts)
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if simulation is not None:  # fault injection exists only in simulate mode
        app.router.add_post("/-/simulate", simulation.handle)
    return app
