"""Precision and recall of parent-link repair (run by hand, not in CI).

    python bench/match_quality.py --accounts 100000 [--seed 7]
    python bench/match_quality.py --org ../shared/data/real-families --truth ../shared/data/real-families/truth.csv

The first generates an org (truth.csv beside it), runs `plan` with the shipped rules and compares every proposed
ParentId change (auto-applied) and every review item with the true parent.

The second scores any org, a folder of Data Loader CSVs (Account.csv; Subscription__c.csv when ARR comes from
subscriptions, else --arr-field on Account), against a truth file of families: `Id, true_root, role` (`root`,
`child` or `distractor`), `link_missing` (1 where the child's ParentId is blank in the org) and `name_evident` (1
where the parent's name shows in the child's). A link is right when both accounts are in the same true family;
links between two distractors are unlabelled, and count as wrong in `precision_strict`. The org's folder is
only read. `--rules` scores other rules than the shipped ones.

Prints stage times and peak memory, and last one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import shutil
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nrr_engine import config, log  # noqa: E402
from nrr_engine.errors import NrrError  # noqa: E402
from nrr_engine.demo import DEMO_AS_OF, generate, write_demo_config  # noqa: E402
from nrr_engine.engine import Engine  # noqa: E402


def ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="build the org here (default: a temporary folder)")
    ap.add_argument("--org", type=Path, help="score this org (a folder of Data Loader CSVs) instead of a generated one")
    ap.add_argument("--truth", type=Path, help="with --org: the truth file of its families")
    ap.add_argument("--arr-field", default="ARR__c",
                    help="with --org and no Subscription__c.csv: the Account field holding ARR (default ARR__c)")
    ap.add_argument("--rules", type=Path, help="with --org: a folder of rule files to score (default: the shipped rules)")
    ap.add_argument("--as-of", type=dt.date.fromisoformat, default=DEMO_AS_OF, help="the plan's date (YYYY-MM-DD)")
    args = ap.parse_args()
    log.configure("warning")
    if args.org is not None or args.truth is not None:
        if args.org is None or args.truth is None:
            ap.error("--org and --truth go together")
        print(json.dumps(score_org(args.org, args.truth, args.keep, args.arr_field, args.rules, args.as_of)))
        return
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


# ---- any org with a truth file of families ----------------------------------------------------------------

TRUTH_COLUMNS = ("Id", "true_root", "role", "link_missing", "name_evident")


def read_truth(path: Path) -> dict[str, dict]:
    """The truth file's rows by Id; exits with the file and line of the first row that does not fit."""
    try:
        fh = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        sys.exit(f"{path}: {e.strerror}")
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in TRUTH_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"{path}:1: missing column(s) {', '.join(missing)}; expected {', '.join(TRUTH_COLUMNS)}")
        truth: dict[str, dict] = {}
        for row in reader:
            line = reader.line_num
            if not row["Id"] or not row["true_root"]:
                sys.exit(f"{path}:{line}: Id and true_root must not be blank")
            if row["role"] not in ("root", "child", "distractor"):
                sys.exit(f"{path}:{line}: role {row['role']!r}; expected root, child or distractor")
            if row["link_missing"] not in ("0", "1", "") or row["name_evident"] not in ("0", "1", ""):
                sys.exit(f"{path}:{line}: link_missing and name_evident are 1, 0 or blank")
            if row["Id"] in truth:
                sys.exit(f"{path}:{line}: Id {row['Id']} appears twice")
            truth[row["Id"]] = row
    return truth


def org_config(work: Path, org: Path, arr_field: str, rules: Path | None) -> Path:
    """A project in `work` whose config reads `org` where it is (never written: a plan writes only the state)."""
    from nrr_engine.demo.generator import copy_rules
    from nrr_engine.safe_output import private_bytes, private_dir
    if rules is None:
        copy_rules(work / "rules")
    else:
        private_dir(work / "rules")
        for item in rules.iterdir():
            if item.is_file():
                shutil.copyfile(item, work / "rules" / item.name)
    if (org / "Subscription__c.csv").is_file():
        arr = ("{source: subscriptions, subscriptions: {object: Subscription__c, account: Account__c, start: "
               "Start_Date__c, end: End_Date__c, amount: Amount__c, amount_period: annual}}")
    else:
        arr = f"{{source: account_field, account_field: {arr_field}}}"
    text = (f"source: {{kind: local, path: {json.dumps(str(org.resolve()))}}}\n"
            f"allowed_paths: [{json.dumps(str(org.resolve()))}]\n"
            "state: ../state/nrr.db\ncurrency: USD\n"
            f"arr: {arr}\n"
            "views: [{name: legal, parent_field: ParentId}]\n"
            "rules: [../rules/*.yaml]\n"
            "hierarchy: {auto_apply: 0.95, child_limit: 10000, max_depth: 100, missing_parents: placeholder}\n"
            "snapshots: {enabled: false}\n")
    private_dir(work / "config")
    private_bytes(work / "config" / "nrr.yaml", text.encode("utf-8"))
    return work / "config" / "nrr.yaml"


def family_scores(auto: dict[str, str], review: dict[str, str], truth: dict[str, dict]) -> dict:
    """Right / wrong / unlabelled links and recall, family by family (as ../shared/bench/score_links.py)."""
    def score(links: dict[str, str]) -> tuple[int, int, int]:
        right = wrong = unlabelled = 0
        for child, parent in links.items():
            t, p = truth.get(child), truth.get(parent)
            if t is None or p is None:
                wrong += 1   # an account the truth does not know (a placeholder the plan would create)
            elif t["role"] == "distractor" and p["role"] == "distractor":
                unlabelled += 1
            elif t["true_root"] == p["true_root"]:
                right += 1
            else:
                wrong += 1
        return right, wrong, unlabelled

    def recall(ids: list[str], links: dict[str, str]) -> float | None:
        return ratio(sum(1 for i in ids if links.get(i) in truth and truth[links[i]]["true_root"] == truth[i]["true_root"]),
                     len(ids))
    missing = [i for i, t in truth.items() if t["link_missing"] == "1"]
    evident = [i for i in missing if truth[i]["name_evident"] == "1"]
    (ar, aw, au), (rr, rw, ru) = score(auto), score(review)
    both = {**review, **auto}
    return {"missing_links": len(missing), "name_evident": len(evident),
            "auto": {"right": ar, "wrong": aw, "unlabelled": au, "precision": ratio(ar, ar + aw),
                     "precision_strict": ratio(ar, ar + aw + au), "recall_evident": recall(evident, auto),
                     "recall_missing": recall(missing, auto)},
            "review": {"right": rr, "wrong": rw, "unlabelled": ru, "precision": ratio(rr, rr + rw),
                       "precision_strict": ratio(rr, rr + rw + ru)},
            "with_review": {"recall_evident": recall(evident, both), "recall_missing": recall(missing, both)}}


def score_org(org: Path, truth_path: Path, keep: Path | None, arr_field: str, rules: Path | None,
              as_of: dt.date) -> dict:
    if not (org / "Account.csv").is_file():
        sys.exit(f"{org}: no Account.csv (expected a folder of Data Loader CSVs)")
    truth = read_truth(truth_path)
    work = keep or Path(tempfile.mkdtemp(prefix="nrr-match-"))
    try:
        cfg = org_config(work, org, arr_field, rules)
        with Engine(config.load(cfg)) as engine:
            outcome = engine.execute(as_of=as_of, dry_run=True)
            plan = outcome.plan
            auto = {c.id: c.new for c in plan.all_changes() if c.object == "Account" and c.field == "ParentId" and c.new}
            queue = [i for items in plan.review_queue(engine.settings).values() for i in items]
            review = {i["child_id"]: i["parent_id"] for i in queue if i["child_id"] and i["parent_id"]}
            # a parent to create for accounts that share a family key: not a link to score (score_links.py counts
            # every such item as one wrong link, to an account of Id None)
            placeholders = sum(1 for i in queue if not i["child_id"])
    except NrrError as e:
        sys.exit(f"error: {e}")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    unknown = [i for i in auto if i not in truth] + [i for i in review if i not in truth]
    if unknown:
        print(f"note: {len(unknown)} linked account(s) not in the truth file (counted wrong), e.g. {unknown[0]}",
              file=sys.stderr)
    out = {"org": str(org), "accounts": len(truth), **family_scores(auto, review, truth), "placeholders": placeholders,
           "stages": outcome.summary["stages"],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(f"auto precision {out['auto']['precision']}, auto recall of name-evident links {out['auto']['recall_evident']}"
          f"; review precision {out['review']['precision']} (strict {out['review']['precision_strict']}); auto+review "
          f"recall of name-evident {out['with_review']['recall_evident']}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
