"""Run every benchmark with its defaults, one after another (about 15 minutes on 2 cores).

    python bench/run_all.py [--quick]

Each benchmark prints its own figures and writes bench/results/<name>-<time>.json (and
<name>-latest.json); this script prints a one-screen summary at the end and writes
bench/results/summary-<time>.json. `--quick` runs every benchmark with small numbers (a smoke
test of the benchmarks themselves, ~5 minutes; its figures are not the ones to quote).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import enroll  # noqa: E402
import latency  # noqa: E402
import scale  # noqa: E402
import throughput  # noqa: E402

QUICK = {
    "throughput": ["--n-fast", "60", "--n-stock", "8", "--repeats", "2", "--stock-repeats", "1"],
    "latency": ["--duration", "10", "--load-duration", "5", "--stock-load-duration", "3"],
    "enroll": ["--n", "30", "--repeats", "1"],
    "scale": ["--n", "60", "--stock-n", "4", "--bulk", "100", "--samples", "20"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="summarize bench/results/*-latest.json, run nothing")
    args = parser.parse_args()
    started = time.time()
    out: dict = {}
    for name, module in (("throughput", throughput), ("latency", latency), ("enroll", enroll), ("scale", scale)):
        if args.summary_only:
            out[name] = json.loads((h.RESULTS / f"{name}-latest.json").read_text())
            continue
        h.log(f"===== {name} =====")
        t = time.time()
        out[name] = module.main(QUICK[name] if args.quick else [])
        out[name + "_seconds"] = time.time() - t

    tp, lat, en, sc = out["throughput"], out["latency"], out["enroll"], out["scale"]
    lines = [
        "",
        f"===== summary ({(time.time() - started) / 60:.1f} min{', QUICK' if args.quick else ''}) =====",
        f"throughput steps/s (median): stock {tp['stock']['steps_per_second']['median']:.2f}, "
        f"fast {tp['fast']['steps_per_second']['median']:.2f} -> {tp.get('ratio_steps_per_second', float('nan')):.1f}x  (target >= 10/s and >= 10x)",
        f"CPU-s per step (median): stock {tp['stock']['cpu_seconds_per_step']['median']:.3f}, "
        f"fast {tp['fast']['cpu_seconds_per_step']['median']:.3f}",
        f"latency p95 at {lat['fast']['low_load'][0]['rate']:g} step/s: stock {lat['stock']['low_load_p95_seconds']['median']:.2f}s, "
        f"fast {lat['fast']['low_load_p95_seconds']['median']:.2f}s  (target <= 2 s)",
        f"latency p95 under load: stock {lat['stock']['under_load']['latency_seconds']['p95']:.2f}s "
        f"({lat['stock']['under_load']['rate']:g}/s), fast {lat['fast']['under_load']['latency_seconds']['p95']:.2f}s "
        f"({lat['fast']['under_load']['rate']:g}/s)",
        "enroll_deal p95, idle server (executor paused; median of reps, measured in the stock / fast half): "
        f"{en['stock']['idle_latency_p95_seconds']['median'] * 1000:.0f} / {en['fast']['idle_latency_p95_seconds']['median'] * 1000:.0f} ms as is, "
        f"{en['stock']['idle_reused_client_p95_seconds']['median'] * 1000:.0f} / {en['fast']['idle_reused_client_p95_seconds']['median'] * 1000:.0f} ms "
        "with a reused Prefect client  (target <= 50 ms)",
        f"enrolled + first email sent per second: stock {en['stock']['under_load_processed_per_second']['median']:.2f}, "
        f"fast {en['fast']['under_load_processed_per_second']['median']:.2f}",
        f"scale: {sc.get('total_parked')} parked; scheduled runs each {sc.get('scheduled_runs_per_waiting_enrollment', float('nan')):.3f}; "
        f"running/pending {sc.get('running_or_pending_runs')}; followups rows each "
        f"{sc['phases']['fast']['followups_db_per_enrollment']['rows']:.1f}; executor processes held "
        f"{sc['phases']['fast']['parked']['executor_child_processes_max']} (fast), "
        f"{sc['phases'].get('stock', {}).get('parked', {}).get('executor_child_processes_max', '-')} (stock)",
    ]
    print("\n".join(lines))
    out["summary"] = lines
    if not args.summary_only:
        path = h.write_results("summary", out)
        print(f"results: {path}")


if __name__ == "__main__":
    main()
