"""Benchmark the nightly job on a generated org (DESIGN §9). Run by hand, not in CI.

    python bench/run.py --accounts 100000 --months 24
    python bench/run.py --accounts 1000000 --months 24 --source salesforce-double   # needs pip install -e '.[test]'
    python bench/run.py --accounts 1000000 --months 24 --keep /tmp/b1m --change 0.01  # and a rerun after 1 % edits

With --source salesforce-double the org is served by the Salesforce test double, in a process of its own
(the run's requests reach it over a Unix socket, so the run's peak RSS is the engine's), and the API calls of
the run, the rerun, a quiet run (once the read overlap after the rerun has passed: nothing changed since) and
the naive approach (REST query_all + one update call per changed record) are printed.

Generates the org (not timed), runs `nrr-engine run` in a child process (so peak RSS is the run's own),
then reruns it (expects 0 writes), times `report nrr --window 12` three times, and with --change edits that share
of accounts (name) and subscriptions (amount) and runs once more. Prints stage times and, as its last line, one
JSON object.
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

# The double's source reads changes from this long before its last read (source.read_overlap_s): a night's
# run starts long after it; the bench waits it out before its quiet run instead of sleeping until tomorrow.
QUIET_OVERLAP_S = 60


def run_job(config: Path, double_socket: str | None = None) -> tuple[float, float, dict]:
    """Run the nightly job in a child; return wall seconds, peak RSS (MB) and the ledger summary."""
    t0 = time.perf_counter()
    args = ["--config", str(config), "--log-level", "warning", "run", "--as-of", DEMO_AS_OF.isoformat()]
    prefix = [sys.executable, "-m", "nrr_engine"]
    if double_socket is not None:
        prefix = [sys.executable, "-m", "nrr_engine.testing.salesforce_double", "connect", double_socket, "--"]
    proc = subprocess.Popen(prefix + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"run failed with exit {code}:\n{err}\n{out}")
    state = config.parent.parent / "state" / "nrr.db"
    row = sqlite3.connect(state).execute("SELECT summary FROM runs WHERE mode='run' ORDER BY started DESC LIMIT 1").fetchone()
    return wall, usage.ru_maxrss / 1024, json.loads(row[0])


def run_report(config: Path, double_socket: str | None = None, times: int = 3) -> tuple[list[float], float, bool]:
    """`report nrr --window 12` in a child, `times` times; wall seconds of each, the peak RSS (MB) of the
    slowest, and whether it was read from the last run's columnar store."""
    args = ["--config", str(config), "--log-level", "warning", "report", "nrr", "--window", "12", "--format", "json",
            "--as-of", DEMO_AS_OF.isoformat()]
    prefix = [sys.executable, "-m", "nrr_engine"]
    if double_socket is not None:
        prefix = [sys.executable, "-m", "nrr_engine.testing.salesforce_double", "connect", double_socket, "--"]
    walls, rss, stored = [], 0.0, True
    for _ in range(times):
        t0 = time.perf_counter()
        proc = subprocess.Popen(prefix + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        out = proc.stdout.read()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"report failed:\n{proc.stderr.read()}")
        rss = max(rss, usage.ru_maxrss / 1024)
        stored = stored and "from_run" in json.loads(out)
    return walls, rss, stored


def change_share(org: Path, share: float) -> dict:
    """Change `share` of the accounts (a word added to the name) and of the subscriptions (amount +10 %) in the
    org's CSVs, evenly spread, as a day's edits would; returns how many of each (not timed)."""
    import csv
    step = max(1, round(1 / share))
    counts = {}
    for name, field, edit in (("Account.csv", "Name", lambda v: v + " Services"),
                              ("Subscription__c.csv", "Amount__c", lambda v: f"{float(v) * 1.1:.2f}" if v else v)):
        path = org / name
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        col = rows[0].index(field)
        n = 0
        for k in range(1, len(rows), step):
            rows[k][col] = edit(rows[k][col])
            n += 1
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
        counts[name] = n
    return counts


def seed_double(work: Path, config: Path) -> Path:
    """Load the generated org into the double's store; point the config at Salesforce (password auth)."""
    from nrr_engine.testing.salesforce_double import SalesforceDouble

    store = work / "salesforce-double.db"
    for p in work.glob("salesforce-double.db*"):
        p.unlink()
    t0 = time.perf_counter()
    SalesforceDouble.seed(store, work / "org")
    SalesforceDouble(store, metadata=ROOT / "salesforce").db.close()  # adds the custom fields' columns once
    text = config.read_text().replace("source: {kind: local, path: ../org}",
                                      "source: {kind: salesforce, auth: password, poll_s: 0.05, api_reserve: 1000, "
                                      f"read_overlap_s: {QUIET_OVERLAP_S}}}")
    config.write_text(text)
    print(f"seeded the Salesforce double in {time.perf_counter() - t0:.1f}s", flush=True)
    return store


def start_double(store: Path) -> tuple[subprocess.Popen, str]:
    """The double in a process of its own (so the run's peak RSS is the engine's), serving on a Unix socket."""
    socket = str(store.with_suffix(".sock"))
    Path(socket).unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "nrr_engine.testing.salesforce_double", "serve", str(store),
                             str(ROOT / "salesforce"), socket], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not Path(socket).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the Salesforce double did not start (exit {proc.poll()})")
        time.sleep(0.1)
    return proc, socket


def stop_double(proc: subprocess.Popen) -> float:
    """Stop the double; return its peak RSS (MB)."""
    proc.terminate()
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def naive_calls(state: Path, store: Path) -> dict:
    """API calls the naive approach needs on the same data: REST query_all of every object the run reads
    (2,000 records a page) plus one update call per record the run changed. Counted from the double's
    record counts and the run's ledger (executing 1.5 M single-record calls would take the double hours)."""
    db = sqlite3.connect(store)
    pages = {}
    for obj in ("Account", "Subscription__c", "KPI_Snapshot__c"):
        n = db.execute(f'SELECT count(*) FROM "{obj}"').fetchone()[0]
        pages[obj] = max(1, -(-n // 2000))
    from nrr_engine.ledger import Ledger  # the run's changes are rows and change files: read through the ledger
    led = Ledger(state)
    first_run = next(r for r in reversed(led.runs(1000)) if r["mode"] == "run")
    changed = len({(c["object"], c["record_id"] or c["external_id"]) for c in led.changes(first_run["id"])})
    led.close()
    calls = {"auth": 1, "rest_query": sum(pages.values()), "record": changed}
    return {"calls": calls, "total": sum(calls.values()), "query_pages": pages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--months", type=int, default=24, help="months of subscription history generated")
    ap.add_argument("--source", choices=["local", "salesforce-double"], default="local")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: reuse the org already generated there")
    ap.add_argument("--change", type=float, metavar="SHARE",
                    help="after the rerun, change this share of accounts and subscriptions (e.g. 0.01) and run again "
                         "(local org; the org's CSVs are edited: regenerate or copy it afterwards)")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="nrr-bench-"))
    double = None
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
        store = socket = None
        if args.source == "salesforce-double":
            store = seed_double(work, config)
            double, socket = start_double(store)

        wall, rss, summary = run_job(config, socket)
        stages = summary["stages"]
        writes = summary["changes"].get("applied", 0) + summary["changes"].get("failed", 0)
        print(f"run: {wall:.1f}s wall, peak RSS {rss:.0f} MB, {writes} writes", flush=True)
        for name, secs in stages.items():
            print(f"  {name:<10} {secs:8.2f}s")
        api, re_api, naive = {}, {}, {}
        if store is not None:
            api = summary.get("api_calls", {})
            print(f"  API calls: {api.get('total')} {api.get('calls')}", flush=True)
            naive = naive_calls(work / "state" / "nrr.db", store)
        if store is not None:   # the rerun's read begins past the overlap after the first run's writes (a night)
            time.sleep(QUIET_OVERLAP_S + 5)
        re_wall, re_rss, re_summary = run_job(config, socket)
        report_walls, report_rss, report_stored = run_report(config, socket)
        quiet = None
        if store is not None:
            # A nightly run the day after: nothing changed in the org since the rerun read it back. The rerun
            # re-reads what the first run wrote (their SystemModstamp moved, and only a read tells our write
            # from someone's edit); a run whose read starts past the overlap after that read finds nothing.
            time.sleep(QUIET_OVERLAP_S + 5)
            q_wall, _, q_summary = run_job(config, socket)
            q_api = q_summary.get("api_calls", {})
            quiet = {"wall_s": round(q_wall, 2), "api_calls": q_api.get("calls", {}), "api_calls_total": q_api.get("total"),
                     "writes": q_summary["changes"].get("applied", 0) + q_summary["changes"].get("failed", 0)}
            print(f"quiet run (nothing changed since the rerun's read, {QUIET_OVERLAP_S + 5} s later): "
                  f"{q_wall:.1f}s wall, {quiet['writes']} writes, API calls: {quiet['api_calls_total']} "
                  f"{quiet['api_calls']}", flush=True)
        double_rss = stop_double(double) if double is not None else None
        re_writes = re_summary["changes"].get("applied", 0) + re_summary["changes"].get("failed", 0)
        print(f"rerun: {re_wall:.1f}s wall, peak RSS {re_rss:.0f} MB, {re_writes} writes", flush=True)
        print(f"report nrr --window 12: {', '.join(f'{w:.2f}' for w in report_walls)} s "
              f"(min {min(report_walls):.2f}, median {sorted(report_walls)[1]:.2f}), peak RSS {report_rss:.0f} MB, "
              f"{'read from the columnar store' if report_stored else 'recomputed'}", flush=True)
        changed = None
        if args.change and store is None:
            edits = change_share(work / "org", args.change)
            ch_wall, ch_rss, ch_summary = run_job(config)
            ch_writes = ch_summary["changes"].get("applied", 0) + ch_summary["changes"].get("failed", 0)
            print(f"rerun after changing {args.change:.0%} ({edits}): {ch_wall:.1f}s wall, peak RSS {ch_rss:.0f} MB, "
                  f"{ch_writes} writes", flush=True)
            for name, secs in ch_summary["stages"].items():
                print(f"  {name:<10} {secs:8.2f}s")
            changed = {"share": args.change, "edits": edits, "wall_s": round(ch_wall, 2), "peak_rss_mb": round(ch_rss),
                       "writes": ch_writes, "stages": ch_summary["stages"]}
        if store is not None:
            re_api = re_summary.get("api_calls", {})
            print(f"  rerun API calls: {re_api.get('total')} {re_api.get('calls')}", flush=True)
            print(f"naive approach (REST query_all, one update call per changed record): {naive['total']} calls "
                  f"{naive['calls']}; ratio naive / engine = {naive['total'] / api['total']:.0f}x", flush=True)
            print(f"the double's own process (not included above): peak RSS {double_rss:.0f} MB", flush=True)
        print(json.dumps({"accounts": info["accounts"], "months": args.months, "source": args.source,
                          "wall_s": round(wall, 2), "peak_rss_mb": round(rss), "stages": stages,
                          "api_calls": api.get("calls", {}), "api_calls_total": api.get("total"),
                          "rerun_api_calls": re_api.get("calls", {}), "naive_api_calls": naive.get("calls", {}),
                          "naive_api_calls_total": naive.get("total"),
                          "writes": writes, "rerun_wall_s": round(re_wall, 2), "rerun_peak_rss_mb": round(re_rss),
                          "rerun_writes": re_writes, "rerun_stages": re_summary["stages"],
                          "report_s": [round(w, 2) for w in report_walls], "report_peak_rss_mb": round(report_rss),
                          "report_from_store": report_stored, "changed_rerun": changed, "quiet_run": quiet,
                          "double_peak_rss_mb": double_rss and round(double_rss)}))
    finally:
        if double is not None and double.poll() is None:  # the run failed: do not leave the double serving
            double.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
