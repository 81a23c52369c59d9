"""Rendering of NRR figures and run summaries: table (terminal), CSV and JSON (DESIGN §8 keys)."""
from __future__ import annotations

import csv
import io
import json

from . import money
from .metrics.nrr import Movement

_ROWS = ("start", "expansion", "contraction", "churn", "end", "nrr", "grr", "internal_transfers",
         "hierarchy_expansion", "new_logo", "reactivation", "families")


def nrr_json(fig: dict) -> dict:
    return {"view": fig["view"], "period": fig["period"], "window": fig["window"],
            "family": fig["family"].as_json(), "naive": fig["naive"].as_json(naive=True),
            "segments": [{"by": s["by"], "value": s["value"], "family": s["family"].as_json()} for s in fig["segments"]]}


def _pct(r) -> str:
    return "n/a" if r is None else f"{(r * 100).quantize(money.Decimal('0.1'))} %"


def _cell(m: Movement, key: str, naive: bool) -> str:
    if naive and key in ("internal_transfers", "hierarchy_expansion"):
        return ""
    if key in ("nrr", "grr"):
        return _pct(getattr(m, key))
    if key == "families":
        return str(m.families)
    return f"{money.to_decimal(getattr(m, key)).quantize(money.Decimal('1')):,}"


def nrr_table(fig: dict) -> str:
    w = {1: "monthly", 3: "trailing 3 months", 12: "trailing 12 months"}.get(fig["window"], f"{fig['window']} months")
    lines = [f"NRR {fig['period']} ({w}), view {fig['view']}", f"{'':22}{'family':>16}{'naive':>16}"]
    for key in _ROWS:
        label = "cohort size" if key == "families" else key.replace("_", " ")
        lines.append(f"{label:22}{_cell(fig['family'], key, False):>16}{_cell(fig['naive'], key, True):>16}")
    for s in fig["segments"]:
        m = s["family"]
        lines.append(f"  {s['by']}={s['value']}: start {money.fmt(m.start)} end {money.fmt(m.end)} "
                     f"NRR {_pct(m.nrr)} GRR {_pct(m.grr)}")
    return "\n".join(lines)


def nrr_csv(fig: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["view", "period", "window", "level", "segment_by", "segment_value", *_ROWS])
    rows = [("family", "", "", fig["family"]), ("naive", "", "", fig["naive"])]
    rows += [("family", s["by"], s["value"], s["family"]) for s in fig["segments"]]
    for level, by, value, m in rows:
        d = m.as_json(naive=level == "naive")
        w.writerow([fig["view"], fig["period"], fig["window"], level, by, value, *[d.get(k, "") for k in _ROWS]])
    return buf.getvalue()


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)
