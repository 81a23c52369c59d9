"""Benchmark the nightly job on a generated org (DESIGN §9). Run by hand, not in CI.

    python bench/run.py --accounts 100000 --months 24

Generates the org (not timed), runs `nrr-engine run` in a child process (so peak RSS is the run's own),
then reruns it (expects 0 writes). Prints stage times and, as its last line, one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nrr_engine.demo import DEMO_AS_OF, generate, write_demo_config  # noqa: E402


def run_job(config: Path) -> tuple[float, float, dict]:
    """Run the nightly job in a child; return wall seconds, peak RSS (MB) and the ledger summary."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nrr_engine", "--config", str(config), "--log-level", "warning",
                             "run", "--as-of", DEMO_AS_OF.isoformat()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"run failed with exit {code}:\n{err}\n{out}")
    state = config.parent.parent / "state" / "nrr.db"
    row = sqlite3.connect(state).execute("SELECT summary FROM runs WHERE mode='run' ORDER BY started DESC LIMIT 1").fetchone()
    return wall, usage.ru_maxrss / 1024, json.loads(row[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--months", type=int, default=24, help="months of subscription history generated")
    ap.add_argument("--source", choices=["local", "salesforce-double"], default="local")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse the org already generated there")
    args = ap.parse_args()
    if args.source != "local":
        sys.exit("--source salesforce-double: the Salesforce connector and its test double are not built yet")

    work = args.keep or Path(tempfile.mkdtemp(prefix="nrr-bench-"))
    try:
        if work.exists():
            shutil.rmtree(work / "state", ignore_errors=True)
        t0 = time.perf_counter()
        if args.reuse and (work / "org" / "Account.csv").exists():
            shutil.rmtree(work / "state", ignore_errors=True)
            with open(work / "org" / "Account.csv", "rb") as fh:
                n = sum(1 for _ in fh) - 1
            info = {"accounts": n, "subscriptions": "(reused)"}
        else:
            info = generate(work / "org", accounts=args.accounts, seed=args.seed, history=args.months)
        gen = time.perf_counter() - t0
        config = write_demo_config(work, history=args.months + 1)
        print(f"generated {info['accounts']} accounts, {info['subscriptions']} subscriptions in {gen:.1f}s", flush=True)

        wall, rss, summary = run_job(config)
        stages = summary["stages"]
        writes = summary["changes"].get("applied", 0) + summary["changes"].get("failed", 0)
        print(f"run: {wall:.1f}s wall, peak RSS {rss:.0f} MB, {writes} writes", flush=True)
        for name, secs in stages.items():
            print(f"  {name:<10} {secs:8.2f}s")
        re_wall, re_rss, re_summary = run_job(config)
        re_writes = re_summary["changes"].get("applied", 0) + re_summary["changes"].get("failed", 0)
        print(f"rerun: {re_wall:.1f}s wall, peak RSS {re_rss:.0f} MB, {re_writes} writes", flush=True)
        print(json.dumps({"accounts": info["accounts"], "months": args.months, "source": args.source,
                          "wall_s": round(wall, 2), "peak_rss_mb": round(rss), "stages": stages, "api_calls": {},
                          "writes": writes, "rerun_wall_s": round(re_wall, 2), "rerun_peak_rss_mb": round(re_rss),
                          "rerun_writes": re_writes}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
