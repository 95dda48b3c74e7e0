"""Every action, loaded in one place: importing this module imports each module of
remediations.actions, and each registers itself (`register(ActionSpec(...))`).

So adding an action is one module under remediations/actions/ plus its tests; the playbook
schema, the engine's runner table and the metrics' label values all follow from ACTIONS.
"""

from __future__ import annotations

import importlib
import pkgutil

import remediations.actions as package
from remediations.actions import REGISTRY, ActionSpec
from remediations.backends import TargetKind

for _module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
    if _module != "registry":
        importlib.import_module(f"{package.__name__}.{_module}")

ACTIONS: dict[str, ActionSpec] = dict(sorted(REGISTRY.items()))
ACTION_KINDS: dict[str, TargetKind] = {name: spec.kind for name, spec in ACTIONS.items()}
