"""prefect.yaml (`prefect deploy --all`) and deployments/definitions.py (`followups serve`, the
fast worker) declare the same deployments, field by field."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.events import DeploymentTriggerTypes
from prefect.flows import Flow
from pydantic import TypeAdapter

from followups.deployments.definitions import local_deployments

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# Keys of a prefect.yaml deployment this test compares; a new key must be compared here too.
COMPARED_KEYS = {"name", "description", "entrypoint", "tags", "parameters", "triggers", "work_pool"}


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def import_entrypoint(entrypoint: str) -> Any:
    module_name, _, attribute = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def trigger_spec(trigger: Any) -> dict[str, Any]:
    spec = trigger.model_dump(mode="json")
    for key in ("expect", "after", "for_each"):  # sets: order carries no meaning
        spec[key] = sorted(spec[key])
    return spec


def from_python() -> dict[str, dict[str, Any]]:
    declared = {}
    for deployment in local_deployments():
        key = f"{deployment.flow_name}/{deployment.name}"
        assert key not in declared, f"{key} is declared twice in deployments/definitions.py"
        declared[key] = {
            "entrypoint": deployment.entrypoint,
            "description": deployment.description,
            "tags": sorted(deployment.tags),
            "parameters": deployment.parameters or {},
            "triggers": [trigger_spec(t) for t in deployment.triggers],
        }
    return declared


def from_yaml() -> dict[str, dict[str, Any]]:
    adapter = TypeAdapter(DeploymentTriggerTypes)
    declared = {}
    for spec in prefect_yaml()["deployments"]:
        key = f"{import_entrypoint(spec['entrypoint']).name}/{spec['name']}"
        assert key not in declared, f"{key} is declared twice in prefect.yaml"
        declared[key] = {
            "entrypoint": spec["entrypoint"],
            "description": spec.get("description"),
            "tags": sorted(spec.get("tags") or []),
            "parameters": spec.get("parameters") or {},
            "triggers": [trigger_spec(adapter.validate_python(t)) for t in spec.get("triggers") or []],
        }
    return declared


def test_both_declare_the_same_deployments():
    assert sorted(from_yaml()) == sorted(from_python())


@pytest.mark.parametrize("field", ["entrypoint", "description", "tags", "parameters", "triggers"])
def test_each_deployment_agrees(field):
    python, declared = from_python(), from_yaml()
    for key in python.keys() & declared.keys():
        assert declared[key][field] == python[key][field], f"{key}: {field} differs between prefect.yaml and definitions.py"


def test_triggers_name_events_filters_and_parameter_templates():
    """What the trigger comparison covers, so an empty comparison cannot pass unnoticed."""
    triggers = {key: d["triggers"] for key, d in from_yaml().items()}
    [offer] = triggers["enroll-on-offer/followups"]
    assert offer["expect"] == ["deal.offer.sent"] and offer["match"] == {"prefect.resource.id": "deal.*"}
    assert offer["parameters"] == {"offer": "{{ event.payload.offer }}"}
    [sync] = triggers["sync-enrollment-state/followups"]
    assert sync["expect"] == ["prefect.flow-run.Resuming", "prefect.flow-run.Suspended"]
    assert sync["match_related"] == {"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"}
    assert sync["parameters"] == {"flow_run_id": "{{ event.resource.id }}"}
    assert triggers["follow-up-sequence/followups"] == []


def test_entrypoints_are_module_paths_of_the_installed_package():
    for spec in prefect_yaml()["deployments"]:
        entrypoint = spec["entrypoint"]
        assert ":" not in entrypoint and not entrypoint.endswith(".py"), f"{entrypoint} is not a module path"
        assert entrypoint.startswith("followups."), f"{entrypoint} is outside the installed package"
        assert isinstance(import_entrypoint(entrypoint), Flow), f"{entrypoint} is not a flow"


def test_no_uncompared_keys_and_one_work_pool():
    for spec in prefect_yaml()["deployments"]:
        assert set(spec) <= COMPARED_KEYS, f"{spec['name']}: compare {set(spec) - COMPARED_KEYS} in this test"
        assert spec["work_pool"]["name"] == "followups"


def test_a_worker_needs_no_checkout():
    """`pull: []` means no pull step; null would make `prefect deploy` add one that changes
    into the deploying machine's working directory."""
    config = prefect_yaml()
    assert config["pull"] == []
    assert config.get("build") is None and config.get("push") is None
    assert all("pull" not in spec for spec in config["deployments"])
