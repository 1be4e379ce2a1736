"""Durable follow-up sequences for real-estate offers, run on Prefect 3."""
