"""The one test harness: real components on 127.0.0.1 for the demo, tests, benchmarks and the
dashboard previews.

A top-level package (importable because tests, `python -m demo`, `python -m bench` and
`python -m dashboards.live_preview` all run from the repository root with it on the path), not
`tests/support` or `demo/`: the demo, bench and dashboards must not import the test suite, and
the tests must not depend on the demo's story. It is not installed with the product, so what
installed code shares with it lives in the installed package: the process-group manager is
`remediations.process`, used by the remediator's local backend and by `services`.

- `services`: `ManagedProcess` (a log file and a readiness URL over `remediations.process`,
  sync and async) and the real components it starts (Prometheus, Alertmanager, the exporter,
  llama-server).
- `stack`: one loopback stack builder (ports, config files, start in order, stop in reverse).
- `prometheus`: one Prometheus HTTP API client.
- `load`: one closed-loop OpenAI-chat load generator.
- `engine_stub`: an engine replaying real captures, counters advancing.
- `files`: one atomic writer. `wait`: one bounded `eventually`.
- `kube_api`: the one Kubernetes API stand-in (no real API server can run here), as strict as
  the real one for everything the backends and the exporter's pod watch use.
"""
