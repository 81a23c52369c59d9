"""bench/match_quality.py --org/--truth: the family-level scores of a hand-checked plan, and the truth file's
errors named by file and line."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("match_quality", ROOT / "bench" / "match_quality.py")
mq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mq)

HEADER = "Id,true_parent,true_root,role,link_missing,name_evident\n"


def truth_rows() -> dict[str, dict]:
    rows = [  # two families (R1: C1 C2; R2: C3) and two distractors
        ("R1", "", "R1", "root", "0", ""), ("C1", "R1", "R1", "child", "1", "1"), ("C2", "R1", "R1", "child", "1", "0"),
        ("R2", "", "R2", "root", "0", ""), ("C3", "R2", "R2", "child", "1", "1"),
        ("D1", "", "D1", "distractor", "0", ""), ("D2", "", "D2", "distractor", "0", "")]
    return {r[0]: dict(zip(("Id", "true_parent", "true_root", "role", "link_missing", "name_evident"), r)) for r in rows}


def test_family_scores_counted_by_hand():
    truth = truth_rows()
    auto = {"C1": "R1", "C3": "R1", "D1": "D2"}   # right, wrong (other family), unlabelled (two distractors)
    review = {"C2": "C1", "C3": "R2", "X9": "R1"}  # right (same family), right, wrong (unknown account)
    got = mq.family_scores(auto, review, truth)
    assert got["missing_links"] == 3 and got["name_evident"] == 2
    assert got["auto"] == {"right": 1, "wrong": 1, "unlabelled": 1, "precision": 0.5, "precision_strict": 0.3333,
                           "recall_evident": 0.5, "recall_missing": 0.3333}
    assert got["review"] == {"right": 2, "wrong": 1, "unlabelled": 0, "precision": 0.6667, "precision_strict": 0.6667}
    # auto wins where both name a child (C3 auto-linked into the wrong family): as score_links.py
    assert got["with_review"] == {"recall_evident": 0.5, "recall_missing": 0.6667}


@pytest.mark.parametrize("text, expected", [
    ("Id,true_root,role\n", "1: missing column(s) link_missing, name_evident; expected Id, true_root, role, "
                              "link_missing, name_evident"),
    (HEADER + "A,,A,root,0,\nB,A,,child,1,1\n", "3: Id and true_root must not be blank"),
    (HEADER + "A,,A,boss,0,\n", "2: role 'boss'; expected root, child or distractor"),
    (HEADER + "A,,A,root,yes,\n", "2: link_missing and name_evident are 1, 0 or blank"),
    (HEADER + "A,,A,root,0,\nA,,A,root,0,\n", "3: Id A appears twice"),
])
def test_truth_file_errors_name_the_line(tmp_path, text, expected):
    path = tmp_path / "truth.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        mq.read_truth(path)
    assert str(e.value) == f"{path}:{expected}"


def test_scores_a_hand_written_org_without_writing_to_it(tmp_path):
    org = tmp_path / "org"
    org.mkdir()
    accounts = ("Id,Name,ParentId,BillingCountry,ARR__c\n"
                "001000000000001AAA,Quixotic Holdings Inc.,,United States,100000\n"
                "001000000000002AAA,Quixotic UK Ltd,,United Kingdom,20000\n"
                "001000000000003AAA,Zebulon Mining Corp,,Canada,5000\n")
    (org / "Account.csv").write_text(accounts, encoding="utf-8")
    (tmp_path / "truth.csv").write_text(
        HEADER + "001000000000001AAA,,001000000000001AAA,root,0,\n"
        "001000000000002AAA,001000000000001AAA,001000000000001AAA,child,1,1\n"
        "001000000000003AAA,,001000000000003AAA,distractor,0,\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "match_quality.py"), "--org", str(org),
                           "--truth", str(tmp_path / "truth.csv")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # "Quixotic UK" is the parent's name plus its own country: auto-applied under Quixotic Holdings
    assert out["auto"]["right"] == 1 and out["auto"]["wrong"] == 0 and out["auto"]["recall_evident"] == 1.0
    assert out["review"]["right"] + out["review"]["wrong"] + out["review"]["unlabelled"] == 0
    assert sorted(p.name for p in org.iterdir()) == ["Account.csv"]
    assert (org / "Account.csv").read_text(encoding="utf-8") == accounts


def test_org_and_truth_go_together(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "match_quality.py"), "--org", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--org and --truth go together" in proc.stderr
