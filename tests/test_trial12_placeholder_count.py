"""A placeholder parent a person rejected is decided (trial 12, F2): runs no longer count or show it as proposed."""
from __future__ import annotations

import json

from test_matching import AS_OF
from conftest import NAME_RULE



def _zeta(org):
    org.account("0015g00000N2AAAAA3", "Zeta US", BillingCountry="United States")
    org.account("0015g00000N3AAAAA3", "Zeta UK", BillingCountry="United Kingdom")
    org.sub("0015g00000N2AAAAA3", "2025-01-01", "", "1000")
    org.rules = {"r.yaml": NAME_RULE}
    return org.write()


def _repair_line(out: str) -> str:
    [line] = [ln for ln in out.splitlines() if " repair: " in ln]
    return line


def test_a_rejected_placeholder_is_not_counted_as_proposed_by_later_runs(org, cli, tmp_path):
    """After `review reject` of the placeholder Zeta, every run says 0 placeholder parents proposed (without
    pointing at review list), its plan lists no placeholder, and the item stays rejected."""
    _zeta(org)
    first = _repair_line(cli("run", *AS_OF).stdout)
    assert "1 placeholder parent(s) to review; see `nrr-engine review list`" in first
    [item] = cli.json("review", "list", "--format", "json")
    cli("review", "reject", str(item["id"]), "--by", "tester")
    for _ in range(2):
        line = _repair_line(cli("run", *AS_OF).stdout)
        assert line.endswith("0 placeholder parent(s) to review"), line
    cli("plan", *AS_OF, "--out", str(tmp_path / "plan.json"))
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [r for r in plan["review"] if str(r["new"]).startswith("placeholder:")] == []
    assert plan["summary"]["repair"]["legal"]["placeholders"] == 0
    assert cli.json("review", "list", "--format", "json") == []
    [after] = cli.json("review", "list", "--status", "all", "--format", "json")
    assert (after["id"], after["status"]) == (item["id"], "rejected")
