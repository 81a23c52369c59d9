"""Precision and recall of parent-link repair against the generator's truth (run by hand, not in CI).

    python bench/match_quality.py --accounts 100000 [--seed 7]

Generates an org (truth.csv beside it), runs `plan` with the shipped rules and compares every proposed
ParentId change (auto-applied) and every review item with the true parent. Prints stage times, peak memory
and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nrr_engine import config, log  # noqa: E402
from nrr_engine.demo import DEMO_AS_OF, generate, write_demo_config  # noqa: E402
from nrr_engine.engine import Engine  # noqa: E402


def ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="build the org here (default: a temporary folder)")
    args = ap.parse_args()
    log.configure("warning")
    work = args.keep or Path(tempfile.mkdtemp(prefix="nrr-match-"))
    t0 = time.perf_counter()
    generate(work / "org", accounts=args.accounts, seed=args.seed, history=24)
    cfg = write_demo_config(work, history=24)
    print(f"generate {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    truth = {r["Id"]: r for r in csv.DictReader(open(work / "truth.csv", encoding="utf-8"))}
    current = {r["Id"]: r["ParentId"] for r in csv.DictReader(open(work / "org" / "Account.csv", encoding="utf-8"))}

    with Engine(config.load(cfg)) as engine:
        outcome = engine.execute(as_of=DEMO_AS_OF, dry_run=True)
        plan = outcome.plan
        applied = [(c.id, c.new, c.rule) for c in plan.all_changes() if c.field == "ParentId"]
        review = [i for items in plan.review_queue(engine.settings).values() for i in items if i["child_id"]]
        placeholders = [i for items in plan.review_queue(engine.settings).values() for i in items if not i["child_id"]]

    # The links a repair should find: accounts whose true parent is missing from the org.
    missing = {a: t for a, t in truth.items() if t["TrueParentId"] and not current[a]}
    evident = {a for a, t in missing.items() if t["Evidence"] in ("name", "mapping")}
    correct = [a for a, new, _ in applied if truth[a]["TrueParentId"] == new]
    wrong = [(a, new, rule) for a, new, rule in applied if truth[a]["TrueParentId"] != new]
    review_children = {i["child_id"] for i in review}
    review_right = [i for i in review if truth[i["child_id"]]["TrueParentId"] == i["parent_id"]]
    found_by_review = {i["child_id"] for i in review_right}
    out = {
        "accounts": args.accounts,
        "missing_links": len(missing), "evident_links": len(evident),
        "auto_applied": len(applied), "auto_correct": len(correct),
        "precision_auto": ratio(len(correct), len(applied)),
        "recall_auto_of_evident": ratio(len(set(correct) & evident), len(evident)),
        "recall_auto_of_missing": ratio(len(correct), len(missing)),
        "review_items": len(review), "review_children": len(review_children),
        "precision_review": ratio(len(review_right), len(review)),
        "recall_review_of_missing": ratio(len(found_by_review), len(missing)),
        # of the missing links not auto-applied correctly, the share a reviewer finds in the queue
        "recall_review_of_rest": ratio(len(found_by_review - set(correct)), len(set(missing) - set(correct))),
        "recall_auto_or_review_of_missing": ratio(len(set(correct) | found_by_review), len(missing)),
        "fuzzy_links_found_in_review": sum(1 for a in found_by_review if missing[a]["Evidence"] == "fuzzy"),
        "fuzzy_links": sum(1 for t in missing.values() if t["Evidence"] == "fuzzy"),
        "placeholders": len(placeholders),
        "stages": outcome.summary["stages"],
        "repair": outcome.summary["repair"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "wrong_sample": wrong[:10],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
