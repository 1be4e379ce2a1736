"""prefect.yaml (`prefect deploy --all`) and deployments/definitions.py (`followups serve`, the
fast worker) declare the same deployments, field by field; the served name follows
FOLLOWUPS_DEPLOYMENT_NAME and the reconcile schedule FOLLOWUPS_RECONCILE_INTERVAL_SECONDS."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.events import DeploymentTriggerTypes
from prefect.flows import Flow
from prefect.utilities.callables import parameter_schema
from pydantic import TypeAdapter, ValidationError

from followups.deployments.definitions import local_deployments
from followups.settings import Settings, reset_settings

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# Keys of a prefect.yaml deployment this test compares; a new key must be compared here too.
COMPARED_KEYS = {"name", "description", "entrypoint", "tags", "parameters", "triggers", "schedules", "work_pool"}
FIELDS = ["entrypoint", "description", "tags", "parameters", "triggers", "schedules"]
OPERATOR_FLOWS = ["pause-enrollment", "resume-enrollment", "cancel-enrollment"]


@pytest.fixture(autouse=True)
def settings_env(monkeypatch):
    """prefect.yaml declares the defaults; the test session may set these differently."""
    for key in ("FOLLOWUPS_DEPLOYMENT_NAME", "FOLLOWUPS_RECONCILE_INTERVAL_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    reset_settings()

    def use(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_settings()

    yield use
    reset_settings()


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


def schedule_spec(interval: Any, active: bool = True) -> dict[str, Any]:
    seconds = interval.total_seconds() if hasattr(interval, "total_seconds") else float(interval)
    return {"interval": seconds, "active": active}


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
            "schedules": [schedule_spec(s.schedule.interval, s.active) for s in deployment.schedules or []],
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
            "schedules": [schedule_spec(s["interval"], s.get("active", True)) for s in spec.get("schedules") or []],
        }
    return declared


def test_both_declare_the_same_deployments():
    assert sorted(from_yaml()) == sorted(from_python())


@pytest.mark.parametrize("field", FIELDS)
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
    [deal_event] = triggers["stop-on-deal-event/followups"]
    assert deal_event["expect"] == ["deal.closed", "deal.offer.accepted", "deal.offer.rejected"]
    assert deal_event["match"] == {"prefect.resource.id": "deal.*"}
    assert deal_event["parameters"] == {"deal_event": "{{ event.payload.deal_event }}", "event": "{{ event.event }}"}
    [sync] = triggers["sync-enrollment-state/followups"]
    assert sync["expect"] == sorted(
        f"prefect.flow-run.{state}" for state in ("Suspended", "Paused", "Cancelling", "Cancelled", "Failed", "Crashed")
    )
    assert sync["match_related"] == [
        {"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"},
        {"prefect.resource.role": "deployment", "prefect.resource.name": "followups"},
    ]
    assert sync["parameters"] == {"flow_run_id": "{{ event.resource.id }}"}
    for key in ["follow-up-sequence/followups", "reconcile-enrollments/followups", *(f"{f}/followups" for f in OPERATOR_FLOWS)]:
        assert triggers[key] == [], key


def test_reconcile_runs_every_five_minutes_and_nothing_else_is_scheduled():
    schedules = {key: d["schedules"] for key, d in from_yaml().items()}
    assert schedules.pop("reconcile-enrollments/followups") == [{"interval": 300.0, "active": True}]
    assert all(found == [] for found in schedules.values())


def test_reconcile_interval_follows_the_setting(settings_env):
    def reconcile_schedules():
        return from_python()["reconcile-enrollments/followups"]["schedules"]

    settings_env(FOLLOWUPS_RECONCILE_INTERVAL_SECONDS="60")
    assert reconcile_schedules() == [{"interval": 60.0, "active": True}]
    # 0: registered switched off, so serving again also switches off one registered before.
    settings_env(FOLLOWUPS_RECONCILE_INTERVAL_SECONDS="0")
    assert reconcile_schedules() == [{"interval": 300.0, "active": False}]


def test_every_deployment_is_named_after_the_deployment_name_setting(settings_env):
    settings_env(FOLLOWUPS_DEPLOYMENT_NAME="follow-up-sequence/staging")
    declared = from_python()
    assert {key.split("/")[1] for key in declared} == {"staging"}
    assert {key.split("/")[0] for key in declared} == {f.split("/")[0] for f in from_yaml()}
    [sync] = declared["sync-enrollment-state/staging"]["triggers"]
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "staging"} in sync["match_related"]


@pytest.mark.parametrize("value", ["staging", "enroll-on-offer/staging", "follow-up-sequence/", "follow-up-sequence/a/b"])
def test_a_deployment_name_that_no_deployment_could_have_is_refused(monkeypatch, value):
    monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", value)
    with pytest.raises(ValidationError, match="follow-up-sequence/<name>"):
        Settings()


def test_prefect_yaml_names_every_deployment_in_one_place():
    """One anchor names them all, the sync trigger's deployment filter included, so renaming
    for a second database is a one-line change."""
    text = PREFECT_YAML.read_text()
    config = prefect_yaml()
    assert config["definitions"]["deployment_name"] == "followups"
    assert text.count("&deployment_name followups") == 1
    assert text.count("\n  - name: *deployment_name\n") == len(config["deployments"])
    assert text.count("prefect.resource.name: *deployment_name") == 1


def test_operator_flows_take_a_described_enrollment_id():
    """What the Prefect UI's Run form shows for pause / resume / cancel."""
    for spec in prefect_yaml()["deployments"]:
        flow = import_entrypoint(spec["entrypoint"])
        if flow.name not in OPERATOR_FLOWS:
            continue
        schema = parameter_schema(flow.fn).model_dump()
        assert schema["required"] == ["enrollment_id"] and list(schema["properties"]) == ["enrollment_id"]
        assert "`enrollment:<id>` tag" in schema["properties"]["enrollment_id"]["description"]
        assert flow.flow_run_name == f"{flow.name.split('-')[0]} enrollment {{enrollment_id}}"


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
