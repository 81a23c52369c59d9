"""The columnar store (state/columns.npz): reports read the last run's ARR and families from it, and the next run
its stored history, giving exactly what recomputing from the org and the ledger gives; stale means recomputed."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import NAME_RULE, Cli
from nrr_engine import config as config_mod
from nrr_engine import store
from nrr_engine.hierarchy.membership import Membership
from nrr_engine.ledger import Ledger
from nrr_engine.metrics import arr as arr_mod
from nrr_engine.model import Accounts

AS_OF = ("--as-of", "2026-11-15")
GLOBEX = Path(__file__).resolve().parents[2] / "shared" / "data" / "globex"


@pytest.fixture
def demo(tmp_path) -> Path:
    """The demo org after its first run (`demo --dir`): config, org, state with a store."""
    Cli(None)("demo", "--dir", str(tmp_path / "d"))
    return tmp_path / "d" / "config" / "nrr.yaml"


def report(cfg: Path, *args: str, recompute: bool = False) -> dict:
    r = Cli(cfg)("report", "nrr", *AS_OF, "--format", "json", *args, *(["--recompute"] if recompute else []))
    return json.loads(r.stdout)


def same_both_ways(cfg: Path, *args: str) -> dict:
    """The report read from the store equals the recomputed one (and says which run it came from)."""
    stored, fresh = report(cfg, *args), report(cfg, *args, recompute=True)
    assert "from_run" in stored and "from_run" not in fresh, (args, stored.get("from_run"))
    stored.pop("from_run")
    assert stored == fresh, args
    return fresh


REPORTS = [(), ("--window", "3"), ("--window", "12"), ("--window", "12", "--by", "Region__c"),
           ("--window", "12", "--as-of-start"), ("--period", "2026-11"), ("--period", "2026-04", "--window", "3")]


def test_a_report_after_a_run_reads_the_store_and_equals_recomputing(demo):
    """After the demo's run, every report (windows, segments, --as-of-start, an open month, an old period) comes
    from the store and equals the figures recomputed from the org and the ledger."""
    for args in REPORTS:
        same_both_ways(demo, *args)


def test_the_store_is_private_and_a_damaged_one_is_recomputed(demo):
    """The store is 0600; a torn or foreign file is not trusted: the report recomputes (exit 0, same figures)."""
    path = demo.parent.parent / "state" / store.NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    expected = report(demo, recompute=True)
    for damage in (path.read_bytes()[: path.stat().st_size // 2], b"not a store", b""):
        path.write_bytes(damage)
        got = report(demo)
        assert "from_run" not in got and got == expected


def test_anything_that_changes_the_figures_makes_the_store_stale(demo, tmp_path):
    """An edited export, a rollback, a config edit and a later month each make the report recompute (no
    from_run), with the new figures; a plan changes nothing, so the store still serves."""
    org = demo.parent.parent / "org"
    Cli(demo)("plan", *AS_OF, "--out", str(tmp_path / "plan.json"))
    assert "from_run" in report(demo)

    r = Cli(demo)("report", "nrr", "--as-of", "2026-12-15", "--format", "json")
    assert "from_run" not in json.loads(r.stdout)

    text = demo.read_text(encoding="utf-8")
    demo.write_text(text + "\n# an edit\n", encoding="utf-8")
    assert "from_run" not in report(demo)
    demo.write_text(text, encoding="utf-8")
    assert "from_run" in report(demo)

    before = report(demo, recompute=True)
    subs = org / "Subscription__c.csv"
    rows = subs.read_text(encoding="utf-8").splitlines()
    header = rows[0].split(",")
    amount = header.index("Amount__c")
    first = rows[1].split(",")
    first[amount] = str(int(float(first[amount])) + 100_000)
    subs.write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n", encoding="utf-8")
    after = report(demo)
    assert "from_run" not in after and after != before
    assert after == report(demo, recompute=True)


def test_a_rollback_makes_the_store_stale(demo):
    """Rolling back the demo's run changes the org and the families: the report recomputes them."""
    run_id = json.loads(Cli(demo)("runs", "list", "--format", "json").stdout)[0]["id"]
    Cli(demo)("rollback", run_id)
    got = report(demo)
    assert "from_run" not in got and got == report(demo, recompute=True)


def test_the_next_run_reads_the_stored_history_from_the_store_and_ends_the_same(demo, tmp_path):
    """A rerun after an edit (a subscription raised, a parent link cut) gives, with the store, the same ledger
    changes, history, membership and report as the same rerun with the store deleted."""
    project = demo.parent.parent
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    for root in (project, twin):
        acc = root / "org" / "Account.csv"
        lines = acc.read_text(encoding="utf-8").splitlines()
        header = lines[0].split(",")
        assert "ParentId" in header
        subs = root / "org" / "Subscription__c.csv"
        srows = subs.read_text(encoding="utf-8").splitlines()
        cells = srows[2].split(",")
        cells[srows[0].split(",").index("Amount__c")] = "777777"
        subs.write_text("\n".join([srows[0], srows[1], ",".join(cells), *srows[3:]]) + "\n", encoding="utf-8")
    (twin / "state" / store.NAME).unlink()
    twin_cfg = twin / "config" / "nrr.yaml"
    rerun = Cli(demo)("--log-level", "info", "run", *AS_OF)
    with_store = rerun.stdout
    assert '"what": "arr history and membership"' in rerun.stderr
    # the ARR is the stored one with the one edited subscription counted again (not the stored one as it was)
    arr_events = [json.loads(ln) for ln in rerun.stderr.splitlines() if '"arr from subscriptions"' in ln]
    assert [e.get("subscriptions_read_again") for e in arr_events] == [1]
    without = Cli(twin_cfg)("run", *AS_OF).stdout
    assert _counts(with_store) == _counts(without)

    def ledger_view(root: Path):
        led = Ledger(root / "state" / "nrr.db")
        arr = sorted(led.arr_segments())
        mem = sorted(led.membership_segments("legal"))
        changes = sorted(repr((c["object"], c["record_id"], c["field"], c["old"], c["new"])) for r in led.runs(10)
                         if r["mode"] == "run" for c in led.changes(r["id"]))
        led.close()
        return arr, mem, changes
    assert ledger_view(project) == ledger_view(twin)
    a, b = report(demo, "--window", "12"), report(twin_cfg, "--window", "12")
    a.pop("from_run")
    b.pop("from_run")
    assert a == b


def _counts(summary: str) -> str:
    return next(line for line in summary.splitlines() if "changes:" in line)


def test_the_runs_reuse_equals_the_ledger(demo):
    """What the next run takes from the store (ARR of the months kept, membership after the run) is what it would
    read from the ledger."""
    settings = config_mod.load(demo)
    cols = store.read(store.path_for(settings.state))
    led = Ledger(settings.state)
    assert cols.meta["stamp"] == led.state_version()
    index = {a: i for i, a in enumerate(cols.ids)}
    first, count = cols.meta["first"], cols.matrix.shape[1]
    assert arr_mod.from_segments(led.arr_segments(), index, first, count, size=len(index)) == cols.matrix
    for view, m in cols.membership.items():
        ledger_m = Membership.from_segments(view, led.membership_segments(view), index, led.membership_count(view))

        def rows(x: Membership):
            return sorted(zip(x.account.tolist(), x.start.tolist(), x.end.tolist(),
                              [x.unknown.get(r, r) for r in x.root.tolist()]))
        assert rows(ledger_m) == rows(m)
    led.close()


@pytest.mark.skipif(not GLOBEX.is_dir(), reason=f"the hand-built Globex org is not at {GLOBEX} (it ships in ../shared/data)")
def test_globex_repair_run_and_approvals_report_the_same_from_the_store(tmp_path):
    """On the hand-built Globex org: after the repair run, and after approving the review queue and running again,
    every report from the store equals recomputing (the families a person approved included)."""
    Cli(None)("init", str(tmp_path / "g"))
    org = tmp_path / "g" / "org"
    for p in org.glob("*.csv"):
        p.unlink()
    for name in ("Account.csv", "Subscription__c.csv"):
        shutil.copy(GLOBEX / name, org / name)
    shutil.copy(GLOBEX / "mappings.csv", tmp_path / "g" / "rules" / "mappings.csv")
    cfg = tmp_path / "g" / "config" / "nrr.yaml"
    Cli(cfg)("run", *AS_OF)
    for args in (("--window", "1"), ("--window", "3"), ("--window", "12"), ("--window", "12", "--as-of-start")):
        same_both_ways(cfg, *args)
    items = json.loads(Cli(cfg)("review", "list", "--format", "json").stdout)
    for it in items:
        Cli(cfg)("review", "approve", str(it["id"]), "--by", "tester", expect=None)
    Cli(cfg)("run", *AS_OF)
    for args in (("--window", "12"), ("--window", "1"), ("--window", "12", "--as-of-start")):
        same_both_ways(cfg, *args)


def test_a_run_that_stops_makes_the_store_stale(demo):
    """A store is current only at the ledger state it was written at: a run that starts and stops (the input
    guard, on an emptied export) leaves it stale even once the export is back byte for byte, mtime included."""
    acc = demo.parent.parent / "org" / "Account.csv"
    data, st = acc.read_bytes(), acc.stat()
    assert "from_run" in report(demo)
    acc.write_text("Id,Name\n", encoding="utf-8")
    Cli(demo)("run", *AS_OF, expect=2)
    acc.write_bytes(data)
    os.utime(acc, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = report(demo)
    assert "from_run" not in got and got == report(demo, recompute=True)


def test_an_unchanged_rerun_takes_its_arr_and_findings_from_the_store(org, tmp_path):
    """A rerun with the same subscriptions CSV takes the last run's ARR and its data-quality findings (a bad
    amount, an orphan subscription) from the store: the rerun's summary and ledger equal a rerun without it."""
    org.account("001A", "Acme")
    org.account("001B", "Acme UK")
    org.sub("001A", "2025-01-01", "", "12000")
    org.sub("001B", "2025-06-01", "", "1,200")      # unreadable amount: arr_not_a_number
    org.sub("001Z", "2025-06-01", "", "500")        # no such account: orphan
    org.write()
    Cli(org.config)("run", *AS_OF)
    twin = tmp_path / "twin"
    shutil.copytree(org.root, twin, symlinks=True)
    (twin / "state" / store.NAME).unlink()
    (twin / "state" / store.PROPOSALS).unlink()   # and matching's proposals: the twin reruns from nothing stored
    rerun = Cli(org.config)("--log-level", "info", "run", *AS_OF)
    again = rerun.stdout
    reused = [json.loads(ln) for ln in rerun.stderr.splitlines() if '"store.reused"' in ln]
    assert {e["what"] for e in reused if not e["what"].startswith("matching")} == {
        "accounts", "arr history and membership", "arr from subscriptions", "the KPI snapshots the org holds"}, \
        rerun.stderr
    without_run = Cli(twin / "config" / "nrr.yaml")("--log-level", "info", "run", *AS_OF)
    without = without_run.stdout
    assert "store.reused" not in without_run.stderr
    def strip(text: str, root: Path) -> list[str]:
        return [ln.replace(str(root), "ROOT") for ln in text.splitlines() if not ln.startswith(("run ", "  stages:"))]
    assert "arr_not_a_number" in again and "orphan" in again
    assert strip(again, org.root) == strip(without, twin)
    cols = store.read(org.root / "state" / store.NAME)
    assert {f["kind"] for f in cols.meta["arr_findings"]} >= {"arr_not_a_number", "orphan_subscription"}


def test_matching_derives_again_only_the_names_and_sites_that_changed(demo, tmp_path):
    """A rerun takes matching's name keys and sites from the store and derives again only the accounts whose
    Name or Website changed: its plan (links, review queue, evidence) equals the same plan without the store."""
    project = demo.parent.parent
    acc = project / "org" / "Account.csv"
    import csv
    with open(acc, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    # two new accounts named as subsidiaries of existing heads, a rename and a moved site: a new account has no
    # derived value in the store, a renamed one a stale value
    heads = [r for r in rows if not r.get("ParentId") and r.get("Website")]
    new = [dict(rows[0], Id=f"001ZZ000000000{k}AAA", Name=heads[k]["Name"] + " Germany", ParentId="",
                Website="") for k in range(2)]
    rows[6]["Name"] = "Zyxwv Unrelated Holdings"
    rows[8]["Website"] = "https://eu." + heads[2]["Website"].split("//")[-1]
    rows += new
    with open(acc, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    (twin / "state" / store.NAME).unlink()
    r = Cli(demo)("--log-level", "info", "plan", *AS_OF, "--out", str(tmp_path / "a.json"))
    events = [json.loads(ln) for ln in r.stderr.splitlines() if '"store.reused"' in ln and "matching" in ln]
    again = {e["what"]: e["derived_again"] for e in events if "derived_again" in e}   # derived columns
    assert again.get("matching's keys of Name") == 3, r.stderr   # the two new accounts and the rename
    assert again.get("matching's sites of Website") == 1
    Cli(twin / "config" / "nrr.yaml")("plan", *AS_OF, "--out", str(tmp_path / "b.json"))

    def plan(path: Path) -> dict:
        p = json.loads(path.read_text(encoding="utf-8"))
        return {k: p[k] for k in ("changes", "review")}
    assert plan(tmp_path / "a.json") == plan(tmp_path / "b.json")
    assert plan(tmp_path / "a.json")["changes"]  # the renames make the plan propose something


def test_the_accounts_come_from_the_store_only_while_the_working_copy_is_what_the_run_left(demo, tmp_path):
    """A rerun reads the accounts (with the links and rollups the run wrote) from the store; once Account.csv is
    touched (same bytes, new mtime) it reads the working copy again; either way the plan equals a run without
    the store."""
    def reused(r) -> set[str]:
        return {json.loads(ln)["what"] for ln in r.stderr.splitlines() if '"store.reused"' in ln}
    project = demo.parent.parent
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    (twin / "state" / store.NAME).unlink()
    r = Cli(demo)("--log-level", "info", "plan", *AS_OF, "--out", str(tmp_path / "a.json"))
    assert "accounts" in reused(r)
    Cli(twin / "config" / "nrr.yaml")("plan", *AS_OF, "--out", str(tmp_path / "b.json"))

    def plan(path: Path) -> dict:
        p = json.loads(path.read_text(encoding="utf-8"))
        return {k: p[k] for k in ("changes", "review", "snapshots")}
    assert plan(tmp_path / "a.json") == plan(tmp_path / "b.json")
    os.utime(project / "org" / "Account.csv")
    r = Cli(demo)("--log-level", "info", "run", *AS_OF)
    assert "accounts" not in reused(r) and "changes: planned 0" in r.stdout
    r = Cli(demo)("--log-level", "info", "run", *AS_OF)   # that run wrote the store again: current once more
    assert "accounts" in reused(r) and "changes: planned 0" in r.stdout


def test_a_rerun_that_changes_nothing_only_moves_the_stamp(demo):
    """A rerun with every input as the store has it and nothing to write leaves columns.npz as it is and stamps
    it current (columns.stamp names that very file): reports still read it; a stamp file left from another
    store file is not taken for this one."""
    state = demo.parent.parent / "state"
    Cli(demo)("run", *AS_OF)                      # writes a store whose inputs are all the store's next time
    before = (state / store.NAME).stat()
    first = report(demo)["from_run"]
    r = Cli(demo)("--log-level", "info", "run", *AS_OF)
    after = (state / store.NAME).stat()
    assert "changes: planned 0" in r.stdout
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert report(demo)["from_run"] == first    # current at the new ledger state, same content
    same_both_ways(demo, "--window", "12")
    side = json.loads((state / store.STAMP).read_text())
    side["file"] = [1, 2, 3]                     # a stamp for some other file: the store's own stamp is stale
    (state / store.STAMP).write_text(json.dumps(side))
    assert "from_run" not in report(demo)


def test_account_columns_are_packed_as_written_and_a_nul_leaves_them_out(tmp_path):
    """The store packs each account column only as it writes it; one that cannot be packed (a NUL in a value)
    leaves the store without account columns (its meta says so), readable for the rest."""
    from nrr_engine import store
    from nrr_engine.metrics.monthly import MonthlyArr
    from nrr_engine.packed import pack_column
    made = []

    def column(values):
        def make():
            made.append(values)
            return pack_column(values)
        return make
    meta = {"stamp": 1, "account_fields": ["Id", "Name", "Region__c"]}
    ids = ["001A", "001B"]
    arr = MonthlyArr.from_dense(np.array([[5, 5], [0, 7]]))
    path = tmp_path / "good.npz"
    store.write(path, meta, ids, arr, {}, {}, {}, None, None,
                {"Name": column(["Acme", None]), "Region__c": column(["NA", "EMEA"])})
    cols = store.read(path)
    assert made == [["Acme", None], ["NA", "EMEA"]]
    assert cols.accounts(["Id", "Name", "Region__c"]) == [ids, ["Acme", None], ["NA", "EMEA"]]
    assert cols.matrix == arr
    bad = tmp_path / "bad.npz"
    store.write(bad, meta, ids, arr, {}, {}, {}, None, None,
                {"Name": column(["Ac\x00me", None]), "Region__c": column(["NA", "EMEA"])})
    cols = store.read(bad)
    assert cols.meta["account_fields"] is None and "account_columns" not in cols.meta
    assert cols.accounts(["Id", "Name", "Region__c"]) is None
    assert cols.ids == ids and cols.matrix == arr


def test_a_quiet_rerun_packs_the_account_columns_the_store_holds_only_by_reference(org):
    """Accounts fetch took unchanged from the store are not packed again: the columns given for the next store
    are the store's own, read from its file only when written, and equal packing the columns anew."""
    org.account("001A", "Acme", BillingCountry="US", Website="acme.com")
    org.account("001B", "Acme UK", BillingCountry="United Kingdom")
    org.account("001C", "Café Ünïcode", BillingCountry=None)
    org.sub("001A", "2025-01-01", "", "12000")
    org.rules = {"r.yaml": NAME_RULE}
    org.write()
    Cli(org.config)("run", *AS_OF)
    Cli(org.config)("run", *AS_OF)
    cols = store.read(store.path_for(org.root / "state" / "nrr.db"))
    fields, names = cols.meta["account_fields"], cols.meta["account_columns"]
    assert names and fields[1:] == names
    values = cols.accounts(fields)
    accounts = Accounts(values[0], dict(zip(names, values[1:])))
    eager = store.pack_columns(accounts, names)
    lazy = store.pack_columns(accounts, names, None, cols)
    assert set(lazy) == set(eager) == set(names)
    for name in names:
        assert callable(lazy[name])
        got, want = lazy[name](), eager[name]
        assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes(), name
    columns = store.account_columns(accounts, lazy, [], fields)
    assert all(columns[n]()[0].tobytes() == eager[n][0].tobytes() for n in names)


def working_copy_rows(root: Path) -> dict:
    import sqlite3
    con = sqlite3.connect(root / "state" / "local-org.db")
    out = {t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
           for t in ("Account", "KPI_Snapshot__c")}
    con.close()
    return out


@pytest.mark.parametrize("how", ["deleted", "restored from an older copy"])
def test_a_working_copy_made_again_is_not_taken_for_the_one_the_store_was_written_from(demo, tmp_path, how):
    """The store holds the accounts as the last run left them in the working copy. A working copy deleted (and
    loaded again from the CSVs) or put back from a copy older than that run lacks the run's links, rollups and
    snapshots: the next run writes them again (before, it took the store's accounts, planned nothing and left
    the working copy without them)."""
    cli = Cli(demo)
    root = demo.parent.parent
    want = working_copy_rows(root)
    wc = root / "state" / "local-org.db"
    if how == "deleted":
        for p in root.glob("state/local-org.db*"):
            p.unlink()
    else:
        # a copy taken before the last run wrote (the demo's run): the working copy as the CSVs loaded it
        fresh = tmp_path / "fresh"
        shutil.copytree(root, fresh, ignore=shutil.ignore_patterns("state"))
        Cli(fresh / "config" / "nrr.yaml")("plan", *AS_OF)   # loads the CSVs, writes nothing to the org
        for p in root.glob("state/local-org.db*"):
            p.unlink()
        for p in (fresh / "state").glob("local-org.db*"):
            shutil.copy(p, root / "state" / p.name)
    out = cli("--log-level", "info", "run", *AS_OF)
    assert '"what": "accounts"' not in out.stderr
    assert "changes: planned 0" not in out.stdout
    assert working_copy_rows(root) == want
    assert wc.exists()
    again = cli("run", *AS_OF).stdout
    assert "changes: planned 0" in again


def test_an_unchanged_rerun_takes_the_orgs_snapshots_from_the_store_and_a_changed_one_reads_them(demo, tmp_path):
    """A rerun whose snapshots are the ones the last run left in this working copy (same digest, nothing loaded
    since) neither reads nor compares the org's records; a KPI snapshot CSV put in the org folder (an edited
    export) is read and compared, and the edited record is written back."""
    cli, root = Cli(demo), demo.parent.parent
    quiet = cli("--log-level", "info", "run", *AS_OF)
    assert '"what": "the KPI snapshots the org holds"' in quiet.stderr
    assert '"snapshots.read"' not in quiet.stderr and "KPI snapshots of 2026-10: 450 (0 written)" in quiet.stdout
    cli("export", "--out", str(tmp_path / "x"))
    rows = (tmp_path / "x" / "full" / "KPI_Snapshot__c.csv").read_text(encoding="utf-8").splitlines()
    head = rows[0].split(",")
    cells = rows[1].split(",")
    key, was = cells[head.index("External_Id__c")], cells[head.index("Ending_ARR__c")]
    cells[head.index("Ending_ARR__c")] = "1.00"
    (root / "org" / "KPI_Snapshot__c.csv").write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n",
                                                      encoding="utf-8")
    edited = cli("--log-level", "info", "run", *AS_OF)
    assert '"what": "the KPI snapshots the org holds"' not in edited.stderr
    assert "KPI snapshots of 2026-10: 450 (1 written)" in edited.stdout
    import sqlite3
    con = sqlite3.connect(root / "state" / "local-org.db")
    assert con.execute('SELECT Ending_ARR__c FROM KPI_Snapshot__c WHERE External_Id__c = ?', [key]).fetchone()[0] == was
    con.close()


def test_a_review_decision_that_changes_the_families_reads_the_orgs_snapshots(demo):
    """The inputs are the store's but an approval changes the families: the snapshots differ from the ones the
    org holds, so the run reads and compares them (and writes what changed)."""
    cli = Cli(demo)
    items = cli.json("review", "list", "--format", "json")
    assert items, "the demo has links to review"
    cli("review", "approve", str(items[0]["id"]))
    out = cli("--log-level", "info", "run", *AS_OF)
    assert '"snapshots.read"' in out.stderr
    assert "(0 written)" not in out.stdout


def test_a_rollback_of_a_run_that_recorded_no_family_says_so(demo):
    """A run that changed ARR (one subscription's amount) but no family: its rollback says the family membership
    stays as recorded, rather than "family membership of 0 account(s) restored"."""
    root = demo.parent.parent
    subs = root / "org" / "Subscription__c.csv"
    rows = subs.read_text(encoding="utf-8").splitlines()
    head = rows[0].split(",")
    cells = rows[1].split(",")
    cells[head.index("Amount__c")] = str(int(float(cells[head.index("Amount__c")])) + 1200)
    subs.write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n", encoding="utf-8")
    cli = Cli(demo)
    run_id = cli("run", *AS_OF).stdout.split()[1]
    for args in (("--dry-run",), ()):
        out = cli("rollback", run_id, *args).stdout
        assert "family membership unchanged: the run recorded no family of its own" in out, out
        assert "of 0 account(s)" not in out


def test_a_working_copy_from_before_the_token_is_reused_again_from_the_second_run(demo):
    """A working copy an older version made (no `_nrr_meta`): the first run reads the accounts afresh, and a quiet
    run after it takes them from the store again (the token exists from the working copy's opening on)."""
    import sqlite3
    root = demo.parent.parent
    con = sqlite3.connect(root / "state" / "local-org.db")
    con.execute("DROP TABLE _nrr_meta")
    con.commit()
    con.close()
    cli = Cli(demo)
    first = cli("--log-level", "info", "run", *AS_OF)
    assert '"what": "accounts"' not in first.stderr and "changes: planned 0" in first.stdout
    second = cli("--log-level", "info", "run", *AS_OF)
    assert '"what": "accounts"' in second.stderr and "changes: planned 0" in second.stdout
