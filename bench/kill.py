"""Kill the nightly job with SIGKILL at points spread over every stage of a generated org; check each rerun.

    python bench/kill.py --accounts 20000 --points 31
    python bench/kill.py --accounts 20000 --points 15 --source salesforce-double

Generates an org (not timed), runs the job once cleanly, then for each point: a fresh copy of the prepared
project, `nrr-engine run` killed from outside (SIGKILL) when the point's log event has been seen plus a delay,
the same command again, and the org (every record and field) and the ledger (changes applied exactly once,
snapshots, ARR history, membership, review queue, run statuses) compared with the clean run's. The same
machinery runs in CI on the demo org (tests/test_kill.py). Prints one JSON object as its last line; exits 1
when a rerun differed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import killing  # noqa: E402
from killing import Point  # noqa: E402
from nrr_engine.demo import generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--points", type=int, default=31)
    ap.add_argument("--source", choices=["local", "salesforce-double"], default="local")
    ap.add_argument("--workers", type=int, default=2, help="points run at once (default 2)")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    salesforce = args.source == "salesforce-double"
    with tempfile.TemporaryDirectory(prefix="nrr-kill-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        org = work / "generated"
        generate(org, accounts=args.accounts, seed=args.seed)
        t0 = time.perf_counter()
        base, clean, log = killing.prepare(work, org, salesforce)
        candidates = killing.points(log, fractions=(0.0, 0.25, 0.5, 0.75))
        chosen = [Point(None, 0, 0.3), *killing.spread(candidates, args.points - 1)]
        kills, problems = killing.kill_and_rerun(base, work, chosen, salesforce, clean, args.workers)
        for p in problems:
            print(p, file=sys.stderr)
        landed = Counter(k.landed for k in kills if k.killed)
        print(json.dumps({"accounts": args.accounts, "source": args.source, "points": len(chosen),
                          "killed": sum(landed.values()), "landed": dict(landed), "problems": len(problems),
                          "wall_s": round(time.perf_counter() - t0, 1)}))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
