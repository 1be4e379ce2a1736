"""Settings: one class, env prefix FOLLOWUPS_, secrets never shown."""

from __future__ import annotations

import inspect

from followups.flows.follow_up_sequence import follow_up_sequence
from followups.settings import ProviderMode, Settings


def test_defaults_need_no_configuration(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("FOLLOWUPS_"):
            monkeypatch.delenv(key)
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://postgres@127.0.0.1:5432/followups"
    assert settings.provider_mode is ProviderMode.CONSOLE
    assert (settings.step_retries, settings.step_retry_base_seconds) == (4, 2.0)


def test_environment_overrides_and_secrets_stay_hidden(monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_SENDGRID_API_KEY", "SG.very-secret")
    monkeypatch.setenv("FOLLOWUPS_TWILIO_AUTH_TOKEN", "tw-secret")
    monkeypatch.setenv("FOLLOWUPS_PROVIDER_MODE", "live")
    settings = Settings()
    assert settings.provider_mode is ProviderMode.LIVE
    assert settings.sendgrid_api_key.get_secret_value() == "SG.very-secret"
    shown = repr(settings) + str(settings.model_dump())
    assert "very-secret" not in shown and "tw-secret" not in shown


def test_the_flow_takes_only_an_enrollment_id_and_its_epoch():
    """Everything else is read from the enrollment's row; the epoch is optional, so a run made by
    hand (`prefect deployment run`) with only the id is still accepted (it takes over when the
    pending run has ended or vanished)."""
    parameters = inspect.signature(follow_up_sequence.fn).parameters
    assert list(parameters) == ["enrollment_id", "epoch"]
    assert parameters["epoch"].default is None
