"""Playbooks: alert matchers -> one action with typed params, target labels and guard overrides.

Validated at start; every error names the file, the key path and the offending value. There is
one playbook model per registered action (remediations.actions.registry), told apart by `action`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, create_model, field_validator

from exporter.settings import ConfigError, FrozenModel, format_validation_error, read_yaml
from remediations.actions.registry import ACTIONS
from remediations.targets import LabelMap


class TargetLabels(FrozenModel):
    """Which alert labels name the target; defaults fit our rules in both backends."""

    namespace: str = "namespace"
    deployment: str = "deployment"
    replica: list[str] = Field(default_factory=lambda: ["pod", "target"])
    node: list[str] = Field(default_factory=lambda: ["node"])
    model: str = "model"
    gpu: str = "gpu"
    default_namespace: str | None = Field(
        None, description="Namespace when the alert has none (Kubernetes backend)."
    )

    def label_map(self) -> LabelMap:
        return LabelMap(
            namespace=self.namespace,
            deployment=self.deployment,
            replica=tuple(self.replica),
            node=tuple(self.node),
            model=self.model,
            gpu=self.gpu,
        )


class PlaybookBase(FrozenModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    action: str  # each action's model narrows this to its name ...
    params: FrozenModel  # ... and this to its params model
    match: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Alert label -> value (or any of a list of values)."
    )
    match_re: dict[str, str] = Field(
        default_factory=dict, description="Alert label -> regex (full match)."
    )
    target: TargetLabels = TargetLabels()
    dry_run: bool = Field(False, description="Record what would be done; change nothing.")
    cooldown_seconds: float | None = Field(None, ge=0, description="Overrides the global one.")
    recheck_query: str | None = Field(
        None, description="PromQL to re-check instead of the alert's own expression."
    )

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for label, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{label}: {pattern!r} is not a valid regex: {exc}") from None
        return value

    def matches(self, labels: Mapping[str, str]) -> bool:
        for label, want in self.match.items():
            have = labels.get(label)
            if have is None or (have != want if isinstance(want, str) else have not in want):
                return False
        return all(
            label in labels and re.fullmatch(pattern, labels[label])
            for label, pattern in self.match_re.items()
        )


def _playbook_model(action: str, params: type[FrozenModel]) -> type[PlaybookBase]:
    title = "".join(part.title() for part in action.split("_"))
    return create_model(
        f"{title}Playbook",
        __base__=PlaybookBase,
        action=(Literal[action], ...),  # type: ignore[valid-type, arg-type]
        params=(params, params()),
    )


PLAYBOOK_MODELS = tuple(_playbook_model(name, spec.params) for name, spec in ACTIONS.items())
if TYPE_CHECKING:
    Playbook = PlaybookBase
else:
    Playbook = Annotated[Union[PLAYBOOK_MODELS], Field(discriminator="action")]  # noqa: UP007


class PlaybookFile(FrozenModel):
    playbooks: list[Playbook] = Field(min_length=1)

    @field_validator("playbooks")
    @classmethod
    def _unique(cls, value: list[Any]) -> list[Any]:
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"playbook names must be unique: {', '.join(dupes)}")
        return value

    def first_match(self, labels: Mapping[str, str]) -> Playbook | None:
        """The first playbook whose matchers all hold (order in the file is priority)."""
        return next((p for p in self.playbooks if p.matches(labels)), None)


_adapter = TypeAdapter(PlaybookFile)


def load_playbooks(path: str | Path) -> PlaybookFile:
    data = read_yaml(path)
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
