"""The exporter's /metrics under Prometheus 3's content negotiation, with its exact headers.

Prometheus 3 builds `Accept` from `scrape_protocols` (scrape/scrape.go acceptHeader, config
ScrapeProtocolsHeaders): one entry per protocol in order, q falling from 0.6, the newer text
formats carrying `escaping=<scheme>`, then `*/*`. It no longer guesses the format of a reply: a
missing, unparseable or unknown Content-Type fails the scrape unless the scrape config sets
`fallback_scrape_protocol` (model/textparse/interface.go extractMediaType accepts only
application/openmetrics-text, application/vnd.google.protobuf and text/plain). So every reply
must carry a Content-Type Go's mime.ParseMediaType accepts, naming the format of the body.

Headers below are Prometheus's own: the current ones as its scrape tests expect them
(TestAcceptHeader in scrape/scrape_test.go), 3.0.0's as its
acceptHeader built them (every entry got `escaping=allow-utf-8`, text 1.0.0 twice), and 2.42's.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.app import create_app
from exporter.config import ExporterConfig
from exporter.engines import detect_engine, normalize_text
from exporter.engines.normalize import Families
from exporter.exposition import encode

ENGINE_FIXTURES = [
    p
    for p in sorted((Path(__file__).parents[1] / "fixtures" / "engines").glob("*.txt"))
    if detect_engine(p.read_text()) is not None
]
AiohttpClient = Callable[[web.Application], Any]
Client = TestClient[web.Request, web.Application]

PROTO = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
PROMETHEUS_ACCEPT = {
    # scrape_protocols default (OpenMetricsText1.0.0, OpenMetricsText0.0.1, PrometheusText1.0.0,
    # PrometheusText0.0.4), UTF-8 names (the 3.x default): escaping=allow-utf-8.
    "3.x-default": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    # metric_name_validation_scheme: legacy -> escaping=underscores.
    "3.x-legacy-names": "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    # scrape_native_histograms / created-timestamp ingestion: protobuf first.
    "3.x-proto-first": f"{PROTO};q=0.6,"
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    # One protocol configured.
    "3.x-only-PrometheusText0.0.4": "text/plain;version=0.0.4;q=0.6,*/*;q=0.5",
    "3.x-only-PrometheusText1.0.0": "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.6,*/*;q=0.5",
    "3.x-only-OpenMetricsText0.0.1": "application/openmetrics-text;version=0.0.1;q=0.6,*/*;q=0.5",
    "3.x-only-OpenMetricsText1.0.0": (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,*/*;q=0.5"
    ),
    "3.x-only-PrometheusProto": f"{PROTO};q=0.6,*/*;q=0.5",
    "3.0.0-default": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;escaping=allow-utf-8;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;escaping=allow-utf-8;q=0.3,*/*;q=0.2",
    "2.42": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}
OPENMETRICS = "application/openmetrics-text"
TEXT = "text/plain"
# What Prometheus 3 parses without fallback_scrape_protocol.
PROMETHEUS3_MEDIA_TYPES = {OPENMETRICS, "application/vnd.google.protobuf", TEXT}

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf"^\s*({_TOKEN})/({_TOKEN})((?:\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"(?:[^\"\\]|\\.)*\"))*)\s*;?\s*$"
)


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Go's mime.ParseMediaType, strictly: a parse error is an AssertionError."""
    m = _MEDIA_TYPE.match(content_type)
    assert m, f"Content-Type {content_type!r} does not parse as a media type"
    params = dict(
        (k.lower(), v.strip('"'))
        for k, v in re.findall(rf"({_TOKEN})=({_TOKEN}|\"(?:[^\"\\]|\\.)*\")", m.group(3))
    )
    return f"{m.group(1)}/{m.group(2)}".lower(), params


def preferred_format(accept: str) -> str:
    """The highest-q format this exporter can serve: OpenMetrics >= 1.0.0 or text/plain."""
    best, best_q = TEXT, -1.0
    for entry in accept.split(","):
        mtype, *params = (p.strip() for p in entry.split(";"))
        args = dict(p.split("=", 1) for p in params if "=" in p)
        q = float(args.get("q", "1"))
        version = tuple(int(n) for n in args.get("version", "1.0.0").split("."))
        # `*/*` gets the exporter's default, Prometheus text.
        servable = mtype in (TEXT, "*/*") or (mtype == OPENMETRICS and version >= (1,))
        if servable and q > best_q:
            best, best_q = (OPENMETRICS if mtype == OPENMETRICS else TEXT), q
    return best


@pytest.fixture
async def exporter(aiohttp_client: AiohttpClient) -> Client:
    cfg = ExporterConfig.model_validate({"listen": "127.0.0.1:9835", "simulate": "default"})
    client: Client = await aiohttp_client(create_app(cfg))
    for _ in range(200):  # bounded: the first refresh of every collector
        if (await client.get("/readyz")).status == 200:
            return client
        await client.get("/healthz")
    raise AssertionError("exporter not ready")


@pytest.mark.parametrize("prometheus", sorted(PROMETHEUS_ACCEPT))
@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_prometheus_accept_headers_get_a_declared_parseable_format(
    exporter: Client, prometheus: str, encoding: str
) -> None:
    accept = PROMETHEUS_ACCEPT[prometheus]
    resp = await exporter.get(
        "/metrics", headers={"Accept": accept, "Accept-Encoding": encoding}, auto_decompress=False
    )
    assert resp.status == 200
    mtype, params = media_type(resp.headers["Content-Type"])
    # No fallback_scrape_protocol needed: Prometheus 3 recognises the media type...
    assert mtype in PROMETHEUS3_MEDIA_TYPES
    # ...and it is the format Prometheus prefers among those the exporter can write.
    assert mtype == preferred_format(accept)
    assert params.get("charset", "utf-8").lower() == "utf-8"
    raw = await resp.read()
    if encoding == "gzip":
        assert resp.headers.get("Content-Encoding") == "gzip"
        raw = gzip.decompress(raw)
    else:
        assert "Content-Encoding" not in resp.headers
    body = raw.decode()
    if mtype == OPENMETRICS:
        assert params.get("version") == "1.0.0"
        assert body.endswith("# EOF\n")
        families = list(parse_openmetrics(body))  # strict: raises on anything not OpenMetrics
        # 2.x stores OpenMetrics `_created` samples as series, 3.x skips them: none are written,
        # so both keep the same series.
        assert not [s.name for f in families for s in f.samples if s.name.endswith("_created")]
    else:
        assert "# EOF" not in body
        families = list(parse_text(body))
    names = {f.name for f in families}
    assert "inferwatch_exporter_build_info" in names
    assert any(n.startswith("inferwatch_gpu_") for n in names)


async def test_no_accept_header_gets_prometheus_text(exporter: Client) -> None:
    """What a fallback_scrape_protocol-less client (curl, older scrapers) gets: text 0.0.4."""
    resp = await exporter.get("/metrics", headers={"Accept": ""})
    mtype, params = media_type(resp.headers["Content-Type"])
    assert (mtype, params.get("version")) == (TEXT, "0.0.4")
    assert list(parse_text(await resp.text()))


async def test_every_metric_name_is_legacy_valid_so_escaping_never_changes_it(
    exporter: Client,
) -> None:
    """Prometheus 3 asks for escaping=allow-utf-8 (or underscores/dots/values): names that are
    legacy-valid come back identical under every scheme, so dashboards and rules see one name."""
    resp = await exporter.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT["3.x-default"]})
    legacy = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    label = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    for family in parse_openmetrics(await resp.text()):
        assert legacy.match(family.name), family.name
        for sample in family.samples:
            assert all(label.match(k) for k in sample.labels), sample


def prometheus3_float_label(value: float) -> str:
    """Prometheus 3's normalization of `le`/`quantile` values at ingestion
    (model/textparse formatOpenMetricsFloat: Go's shortest 'g' format, `.0` added to integers)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    exp = len(digits) + exponent - 1  # decimal exponent of the first digit
    head = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go's 'g' with the shortest precision decides on 6
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        return f"{head}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    text = format(Decimal(repr(value)).normalize(), "f")
    return text if "." in text else text + ".0"


@pytest.mark.parametrize("fixture", ENGINE_FIXTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_le_values_are_already_what_prometheus3_normalizes_them_to(
    fixture: Path, openmetrics: bool
) -> None:
    """Prometheus 3 rewrites `le="1"` to `le="1.0"` on ingestion, and rules matching `le="1"`
    stop matching. The exporter writes every engine's bucket bounds in the normalized form
    already, so `le` series keep their identity from 2.x to 3.x and the SLO's `le="0.75"`
    matcher (or an exprReplacements `le="1.0"`) matches under both."""
    result = normalize_text(fixture.read_text(), target="t")
    families = Families()
    families.add_all(result.groups)
    body = encode(families.metrics(), openmetrics).decode()
    bounds = re.findall(r'[{,]le="([^"]*)"', body)
    assert bounds
    assert [b for b in bounds if b != prometheus3_float_label(float(b))] == []


def test_prometheus3_float_label_matches_go() -> None:
    """The reference itself, on values whose Go formatting is known."""
    cases = {1.0: "1.0", 0.75: "0.75", 0.001: "0.001", 1e-05: "1e-05", 1e6: "1e+06"}
    cases |= {131072.0: "131072.0", 2.5e-3: "0.0025", math.inf: "+Inf", 12.0: "12.0"}
    assert {v: prometheus3_float_label(v) for v in cases} == cases
