"""Prefect tasks (installed as followups.tasks): one task per EMAIL / SMS step."""
