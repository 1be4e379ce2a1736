"""HTTP API (installed as followups.api)."""
