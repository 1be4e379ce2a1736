"""Prefect tasks and the provider clients they call (installed as followups.tasks)."""
