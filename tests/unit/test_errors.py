"""One error hierarchy: every error the package raises on purpose is a PricePipeError, and the
names the state machines retry on are classes of pricepipe.errors (the ASL files match class names)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pricepipe
from pricepipe import errors

STATE_MACHINES = Path(__file__).resolve().parents[2] / "infrastructure" / "statemachines"


def test_every_error_class_the_package_defines_is_a_pricepipe_error() -> None:
    defined: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(pricepipe.__path__, "pricepipe."):
        loaded = importlib.import_module(module.name)
        for name, value in vars(loaded).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.name:
                defined[f"{module.name}.{name}"] = value
    assert "pricepipe.serving.service.NoModelDeployed" in defined and "pricepipe.registry.RegistryError" in defined
    outside = sorted(name for name, error in defined.items() if not issubclass(error, errors.PricePipeError))
    assert outside == []


def test_a_missing_bucket_is_a_configuration_error_not_a_transient_one() -> None:
    assert issubclass(errors.BucketNotFound, errors.ConfigurationError)
    assert not issubclass(errors.BucketNotFound, errors.TransientError)


def retried_names(state: dict) -> set[str]:  # type: ignore[type-arg]
    names = {name for retry in state.get("Retry", []) for name in retry["ErrorEquals"]}
    for inner in (state.get("ItemProcessor") or {}).get("States", {}).values():
        names |= retried_names(inner)
    for branch in state.get("Branches", []):
        for inner in branch["States"].values():
            names |= retried_names(inner)
    return names


def test_every_error_a_state_machine_retries_on_is_a_class_of_the_errors_module() -> None:
    ours = set()
    for path in STATE_MACHINES.glob("*.asl.json"):
        for state in json.loads(path.read_text())["States"].values():
            ours |= {n for n in retried_names(state) if not n.startswith(("States.", "Lambda."))}
    assert ours, "no retried error names found: the walk over the ASL files is wrong"
    assert all(issubclass(getattr(errors, name), errors.PricePipeError) for name in ours)
