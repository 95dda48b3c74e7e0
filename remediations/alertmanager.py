"""Alertmanager's webhook payload (version 4), parsed leniently.

Alertmanager keeps adding top-level fields (notification_reason in 0.32, routeLabels in 0.34), so
unknown fields are ignored; the fields we act on are typed and required.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_LABEL_VALUE = 1024


def episode_time(when: datetime) -> str:
    """One text per instant: UTC, microseconds, `Z` (a naive time is taken as UTC), so the
    same start written with another UTC offset is the same episode."""
    aware = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Lenient):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("labels", "annotations")
    @classmethod
    def _bounded(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if len(key) > 256 or len(item) > MAX_LABEL_VALUE:
                raise ValueError(f"label {key[:40]!r} is longer than allowed")
        return value

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def dedupe_key(self) -> str:
        """One alert episode: the same series (fingerprint) since the same start (in UTC)."""
        return f"{self.fingerprint}@{episode_time(self.startsAt)}"


class WebhookPayload(_Lenient):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = Field(0, ge=0)
    alerts: list[Alert]
