"""The fast worker: the deployments' flow runs inside one long-lived process.

`python -m followups.worker --concurrency 8 --poll 0.5` (installed as followups.worker)

Same deployments as `followups serve` (followups.deployments.definitions.local_deployments()),
same flow and task runs, states, logs and retries in the Prefect UI, but no new Python process
per flow run: Prefect's own flow engine (`prefect.flow_engine.run_flow`) runs each flow run on
one of N threads. Our flows and tasks are synchronous (SQLAlchemy, httpx), hence threads. The
stock runner and the process worker keep working; any of them can serve the same deployments
at the same time (the server lets exactly one of them claim each run).

- pool_worker.py: the same threads as a Prefect worker type (`prefect worker start --pool P` on a
  pool of type `followups`): Prefect's BaseWorker polls the pool and claims, the threads run.
- main.py: command line, signals (graceful stop, then exit at once on a second signal).
- polling.py: the main loop, claiming due runs only when a thread is free to start them.
- executing.py: executor threads, crashed/cancelled runs, replacement threads for hung runs.
- recovery.py: runs a dead fast worker left behind are rescheduled.
- identity.py: who claimed a run, and whether that process still lives.
- served_flows.py: the deployments served (registered if missing, and again if served without
  a work pool, so new triggers and schedules arrive), and their flows.
- upkeep.py: one heartbeat thread for all runs, tag concurrency limit refresh and clean-up.
- runtime.py: the settings both front ends give their threads.
- concurrency_patches.py: tag concurrency asked only for limits that exist (the private Prefect
  names the worker patches, and why, are all in followups.prefect_private).

Guarantees: at most `concurrency` runs at once (plus at most `concurrency` replacement threads
for hung runs); SIGTERM stops claiming and lets runs in flight finish; a run that raises is
Failed and a run whose engine breaks is Crashed, while the others go on; a run a killed worker
held is rescheduled by the next worker on the host, and a send that was in flight becomes
`STEP_OUTCOME_UNKNOWN` rather than a second send; Cancel in the Prefect UI stops a run in
flight.
"""
