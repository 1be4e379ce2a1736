"""Prefect flows (installed as followups.flows)."""
