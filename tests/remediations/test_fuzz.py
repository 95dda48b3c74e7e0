"""Hostile and broken input: the right status code, never a crash, never an action.

Hypothesis drives a real HTTP client against the app (running in its own thread and event loop,
so each example is one plain request).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remediations.engine import Remediator
from tests.remediations.conftest import FIXTURES, TOKEN, deployment, make_config, running

FIRING: dict[str, Any] = json.loads((FIXTURES / "v0.25-firing.json").read_text())
REMEDIATIONS = ["scale_up", "scale_down", "drain", "restart", "swap_model", "drain_node"]
HOSTILE = [
    "../../etc/passwd",
    "..",
    "/",
    "web/../../x",
    "$(reboot)",
    "`id`",
    "web; rm -rf /",
    "a|b",
    "x && curl evil",
    "web\nnext",
    "web\x00",
    "%2e%2e%2f",
    "~root",
    "*",
    "-rf",
    "--model=/etc/shadow",
    "Web",
    "web.",
    ".web",
    "a" * 300,
    "127.0.0.1:1;ls",
    "{port}",
    "{model}",
    "'",
    '"',
    "\\",
]
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Server:
    """The app on 127.0.0.1 in a background event loop; requests are plain blocking HTTP."""

    def __init__(self, tmp_path: Path) -> None:
        self.cfg = make_config(
            tmp_path,
            prometheus_url=None,
            deployments=[deployment("web", replicas=1)],
            guards={"recheck": False},
        )
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = running(self.cfg)
        self.url, self.remediator = self._run(self._cm.__aenter__())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self._run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def post(self, body: bytes, token: str = TOKEN) -> int:
        req = urllib.request.Request(
            f"{self.url}/alerts",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def settle(self) -> None:
        self._run(self._drained(self.remediator))

    @staticmethod
    async def _drained(remediator: Remediator) -> None:
        await asyncio.wait_for(remediator.queue.join(), 30)

    def acted(self) -> list[Any]:
        return [e for e in self.remediator.state.recent(100000) if e.result != "blocked"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("fuzz"))
    try:
        yield srv
    finally:
        srv.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(body=json_values)
def test_arbitrary_json_is_rejected_with_400(server: Server, body: Any) -> None:
    assert server.post(json.dumps(body).encode()) == 400


@FUZZ
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_are_rejected_with_400(server: Server, body: bytes) -> None:
    assert server.post(body) == 400


REQUIRED = [
    ("version",),
    ("status",),
    ("alerts",),
    ("alerts", 0, "status"),
    ("alerts", 0, "labels"),
    ("alerts", 0, "startsAt"),
    ("alerts", 0, "fingerprint"),
]
WRONG = {
    ("version",): st.sampled_from(["3", "5", "", 4]) | st.integers() | st.none(),
    ("status",): st.text(max_size=10).filter(lambda s: s not in ("firing", "resolved"))
    | st.integers(),
    ("alerts",): st.integers()
    | st.text(max_size=5)
    | st.dictionaries(st.text(max_size=3), st.integers()),
    ("alerts", 0, "status"): st.sampled_from(["FIRING", "pending", ""]) | st.booleans(),
    ("alerts", 0, "labels"): st.lists(st.text(max_size=5), min_size=1)
    | st.integers()
    | st.dictionaries(st.text(max_size=5), st.integers() | st.lists(st.integers()), min_size=1),
    ("alerts", 0, "startsAt"): st.sampled_from(["yesterday", "2026-13-45T99:00:00Z", ""])
    | st.lists(st.integers()),
    ("alerts", 0, "fingerprint"): st.integers() | st.just("") | st.just("f" * 65),
}


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _del(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@FUZZ
@given(data=st.data())
def test_wrong_types_get_400_and_no_action(server: Server, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(WRONG)))
    value = data.draw(WRONG[path])
    assert server.post(json.dumps(_set(FIRING, path, value)).encode()) == 400


@pytest.mark.parametrize("path", REQUIRED)
def test_missing_required_fields_get_400(server: Server, path: tuple[Any, ...]) -> None:
    assert server.post(json.dumps(_del(FIRING, path)).encode()) == 400


def test_body_over_the_default_limit_gets_413(server: Server) -> None:
    """The default limit is 16 MiB (sized for what Alertmanager sends: docs/remediator.md)."""
    payload = _set(FIRING, ("alerts", 0, "annotations", "description"), "x" * (17 << 20))
    assert server.post(json.dumps(payload).encode()) == 413
    assert server.post(b"[" + b"1," * (9 << 20) + b"1]") == 413


hostile = st.sampled_from(HOSTILE) | st.text(min_size=1, max_size=80)
label_names = st.sampled_from(["deployment", "pod", "target", "namespace", "model", "node", "gpu"])


@FUZZ
@given(
    remediation=st.sampled_from(REMEDIATIONS),
    labels=st.dictionaries(label_names, hostile, min_size=1, max_size=4),
    status=st.sampled_from(["firing", "resolved"]),
    fingerprint=st.text(min_size=1, max_size=64),
)
def test_hostile_labels_are_accepted_but_never_acted_on(
    server: Server, remediation: str, labels: dict[str, str], status: str, fingerprint: str
) -> None:
    web = server.remediator.backend.replicas_of("web")[0]
    labels = {k: v for k, v in labels.items() if v not in ("web", web.address, web.name, "0")}
    payload = _set(
        FIRING, ("alerts", 0, "labels"), {"alertname": "Fuzz", "remediation": remediation, **labels}
    )
    payload = _set(payload, ("alerts", 0, "status"), status)
    payload = _set(payload, ("alerts", 0, "fingerprint"), fingerprint)
    code = server.post(json.dumps(payload).encode())
    assert code in (202, 400)
    server.settle()
    assert server.acted() == []
    assert len(server.remediator.backend.replicas_of("web")) == 1
    assert sorted(p.name for p in server.tmp_path.iterdir()) == sorted(
        [
            "endpoints.json",
            "endpoints.json.processes.json",
            "scrape.json",
            "remediator.yaml",
            "state.db",
            "state.db-wal",
            "state.db-shm",
            f"{web.name}.log",
        ]
    )


def test_wrong_token_never_reaches_the_queue(server: Server) -> None:
    before = server.remediator.state.recent(1)
    assert server.post(json.dumps(FIRING).encode(), token="x" * len(TOKEN)) == 401
    server.settle()
    assert server.remediator.state.recent(1) == before
