"""Config loading shared by both services: YAML file, then INFERWATCH_* env, then flags.

One frozen pydantic model per service; every error names the file, the key path and the value,
so a bad config fails at start with one clear line (exit code 2 at the CLI).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config file, env var or flag that cannot be used; the message says where and why."""


class FrozenModel(BaseModel):
    """Base for every config model: immutable, and unknown keys are errors, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9835")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]


class ServiceConfig(FrozenModel):
    """A service's config: where it listens (each service sets its own default)."""

    listen: HostPort

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def env_overrides(
    prefix: str, environ: Mapping[str, str] | None = None, ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Nested overrides from env: PREFIX_A__B=v sets a.b; values are parsed as YAML scalars.

    Names starting with PREFIX + one of `ignore` belong to another component and are skipped.
    """
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    skipped = tuple(prefix + other for other in ignore)
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == prefix or name.startswith(skipped):
            continue
        path = [part.lower() for part in name[len(prefix) :].split("__") if part]
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return result


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings recursively; values in override win."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: a.b.c: message (got value)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(
    model: type[M],
    path: str | Path | None,
    *,
    env_prefix: str,
    env_ignore: tuple[str, ...] = (),
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """Build `model` from defaults < YAML file < env < flags, or raise ConfigError."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data = deep_merge(data, env_overrides(env_prefix, environ, env_ignore))
    data = deep_merge(data, {k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = str(path) if path else "config"
        raise ConfigError(format_validation_error(exc, source)) from None
