"""Ways to deploy and serve the flows (installed as followups.deployments)."""
