"""The one settings class. Every value can be overridden with a `FOLLOWUPS_` variable."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderMode(StrEnum):
    """How EMAIL and SMS steps reach the seller."""

    CONSOLE = "console"  # print the message and record it: the embedded default for demos
    LIVE = "live"  # SendGrid and Twilio over HTTPS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FOLLOWUPS_", env_file=None, extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/followups"
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=20, ge=0)
    # How long a caller waits for a free connection before it gets a BusyError (HTTP 503).
    database_pool_timeout_seconds: float = Field(default=30.0, gt=0)
    # An effect on a Prefect run (suspend, resume, cancel) still undelivered after this long is
    # redelivered by the sweep and reported by `followups doctor`.
    effect_overdue_seconds: int = Field(default=60, ge=0)

    provider_mode: ProviderMode = ProviderMode.CONSOLE
    provider_timeout_seconds: float = Field(default=15.0, gt=0)

    sendgrid_api_key: SecretStr = SecretStr("")
    sendgrid_base_url: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = "offers@example.com"
    sendgrid_from_name: str = "Offer follow-ups"
    # Replies land at reply+<token>@<domain>; SendGrid Inbound Parse forwards them to us.
    reply_domain: str = "reply.example.com"
    sendgrid_webhook_public_key: SecretStr = SecretStr("")
    # SendGrid retries a deferred message for up to 72 h; this many deferrals in a row of one
    # enrollment's mail, with no delivery between, suppress the address like a hard bounce.
    sendgrid_soft_bounce_limit: int = Field(default=5, ge=1)

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str = "https://api.twilio.com"
    twilio_from_number: str = "+15005550006"
    # Public base URL of our HTTP API, used for Twilio status callbacks and signature checks.
    public_base_url: str = ""

    # `follow-up-sequence/<name>`: runs are created from it, and every deployment this install
    # serves is named <name> (e.g. `reconcile-enrollments/<name>`). Databases sharing one Prefect
    # server each need their own <name>.
    deployment_name: str = "follow-up-sequence/followups"
    # The reconcile-enrollments sweep runs this often; 0 registers its schedule switched off.
    reconcile_interval_seconds: int = Field(default=300, ge=0)

    # Step task retries: 5 attempts in total, waits of base * 2**n seconds (2, 4, 8, 16) + jitter.
    step_retries: int = Field(default=4, ge=0)
    step_retry_base_seconds: float = Field(default=2.0, ge=0)
    step_retry_jitter_factor: float = Field(default=0.2, ge=0)

    # TCPA: SMS steps wait out 21:00–08:00 in the seller's time zone.
    quiet_hours_enabled: bool = True
    # Seller addresses and message bodies stay out of Prefect (logs, artifacts) unless allowed.
    prefect_show_pii: bool = False
    # Where the Prefect UI is, for links (`followups status`); default: PREFECT_API_URL without /api.
    prefect_ui_url: str | None = None
    # The Prefect notification block the automations send through, as "<block-type-slug>/<name>"
    # (e.g. "slack-webhook/ops" or "custom-webhook/followups-alerts"); `followups automations apply`.
    notification_block: str | None = Field(default=None, pattern=r"^[a-z0-9-]+/[A-Za-z0-9_-]+$")
    # Follow-up runs send a heartbeat this often (`followups serve`, the fast worker); one silent
    # for zombie_run_seconds is marked Crashed by an automation (`followups automations apply`).
    # (Prefect sends them 30 s apart at the most often.)
    run_heartbeat_seconds: int = Field(default=30, ge=30, le=3600)
    zombie_run_seconds: int = Field(default=90, ge=45, le=86400)
    # An ACTIVE enrollment without a pending run for this long is given its first run by the sweep.
    unscheduled_grace_seconds: int = Field(default=300, ge=30)
    quiet_hours_start: int = Field(default=21, ge=0, le=23)
    # State texting laws stricter than the TCPA (scheduling/state_laws.py): hours, Sundays,
    # state holidays and texts per 24 h, by the property's state and the number's area code.
    state_laws_enabled: bool = True
    quiet_hours_end: int = Field(default=8, ge=0, le=23)

    webhook_max_age_seconds: int = 300
    api_max_body_bytes: int = 1_000_000

    # Send windows and caps
    # Per-second rates live in Prefect global concurrency limits (`followups limits apply`; a
    # rate not applied yet is made by the first send unless caps_strict). Rolling 24 h and hourly
    # caps are counted in PostgreSQL and need no setup.
    caps_enabled: bool = True
    caps_strict: bool = False
    # Sends per second per provider account (the SendGrid key, the Twilio account); 0 = none.
    email_rate_per_second: float = Field(default=10.0, ge=0)
    sms_rate_per_second: float = Field(default=1.0, ge=0)
    # Sends per rolling 24 h, and per rolling hour, per sending identity (from address, SMS
    # number or Messaging Service); 0 = none. An owner's identity can set its own
    # (users.email_daily_cap, email_hourly_cap, sms_daily_cap, sms_hourly_cap).
    email_daily_cap: int = Field(default=1000, ge=0)
    sms_daily_cap: int = Field(default=500, ge=0)
    email_hourly_cap: int = Field(default=0, ge=0)
    sms_hourly_cap: int = Field(default=0, ge=0)
    # How long a send waits for a free slot before it is deferred to a scheduled run instead.
    cap_wait_seconds: float = Field(default=10.0, ge=0)

    # Unsubscribe and deal events
    # Signs the one-click unsubscribe links (HMAC-SHA256). Without it, or without
    # `public_base_url`, emails carry only the mailto unsubscribe (no one-click URL).
    unsubscribe_secret: SecretStr = SecretStr("")
    # Unsubscribe links older than this stop working (CAN-SPAM asks for at least 30); 0: never.
    unsubscribe_link_max_age_days: int = Field(default=365, ge=0)
    # CAN-SPAM: the sender's physical postal address, appended to every email when set.
    email_physical_address: str = ""
    # An SMS STOP also ends the owner's email to that seller (its open sequences, and its mail to
    # the seller's address until a START); off: a STOP concerns texts only.
    sms_stop_stops_email: bool = False

    @field_validator("zombie_run_seconds")
    @classmethod
    def _longer_than_a_heartbeat(cls, value: int, info) -> int:
        beat = info.data.get("run_heartbeat_seconds", 30)
        if value < beat + 15:
            raise ValueError(f"must be at least run_heartbeat_seconds + 15 ({beat + 15}): a live run would look dead")
        return value

    @field_validator("deployment_name")
    @classmethod
    def _one_deployment_of_the_sequence_flow(cls, value: str) -> str:
        flow_name, _, name = value.partition("/")
        if flow_name != "follow-up-sequence" or not name or "/" in name:
            raise ValueError(f"must be follow-up-sequence/<name>, not {value!r}")
        return value

    @property
    def served_deployment_name(self) -> str:
        """The name of every deployment this install serves: the part after the `/`."""
        return self.deployment_name.partition("/")[2]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between sessions)."""
    get_settings.cache_clear()
