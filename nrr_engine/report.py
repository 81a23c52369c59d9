"""Rendering of NRR figures and run summaries: table (terminal), CSV and JSON (DESIGN §8 keys)."""
from __future__ import annotations

import csv
import io
import json

from . import money
from .metrics.nrr import Movement
from .safe_output import csv_row, terminal

_ROWS = ("start", "expansion", "contraction", "churn", "end", "nrr", "grr", "internal_transfers",
         "hierarchy_expansion", "new_logo", "reactivation", "families")


def nrr_json(fig: dict) -> dict:
    """DESIGN §8 keys; `provisional` (the month is not closed) and `excluded` (records left out of ARR) when so."""
    out = {"view": fig["view"], "period": fig["period"], "window": fig["window"],
           "family": fig["family"].as_json(), "naive": fig["naive"].as_json(naive=True),
           "segments": [{"by": s["by"], "value": s["value"], "family": s["family"].as_json()} for s in fig["segments"]]}
    if fig.get("provisional"):
        out["provisional"] = True
        out["note"] = fig["provisional"]
    if fig.get("excluded"):
        out["excluded"] = fig["excluded"]
    if fig.get("cohort_note"):
        out["cohort_note"] = fig["cohort_note"]
    if fig.get("from_run"):  # read from the columnar store that run wrote, not recomputed
        out["from_run"] = fig["from_run"]
    return out


def excluded_text(ex: dict) -> str:
    """What the records left out of ARR take out of a figure, in words (run summary, report table)."""
    def side(d: dict) -> str:
        known = d["records"] - d["amount_unknown"]
        parts = ([f"{d['arr']} in {known} record(s)"] if known else []) + (
            [f"{d['amount_unknown']} of unknown amount"] if d["amount_unknown"] else [])
        return f"active at {d['month']}: " + (" + ".join(parts) if parts else "none")

    text = f"{ex['records']} record(s) left out of ARR (see the data-quality findings); {side(ex['start'])}; " \
           f"{side(ex['end'])}"
    u = ex["dates_unknown"]
    if u["records"]:
        text += f"; {u['records']} with unreadable dates (" + " + ".join(
            ([f"{u['arr']}"] if u["records"] > u["amount_unknown"] else [])
            + ([f"{u['amount_unknown']} of unknown amount"] if u["amount_unknown"] else [])) + ") may count at the window's start, its end, both or neither (their dates decide, once readable)"
    return text


_pct = money.percent


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
    lines = [f"NRR {fig['period']} ({w}), view {fig['view']}"
             + (" - PROVISIONAL: the month is not closed" if fig.get("provisional") else ""),
             f"{'':22}{'family':>16}{'naive':>16}"]
    for key in _ROWS:
        label = "cohort size" if key == "families" else key.replace("_", " ")
        lines.append(f"{label:22}{_cell(fig['family'], key, False):>16}{_cell(fig['naive'], key, True):>16}")
    for s in fig["segments"]:
        m = s["family"]
        lines.append(f"  {terminal(s['by'])}={terminal(s['value'])}: start {money.fmt(m.start)} "
                     f"end {money.fmt(m.end)} NRR {_pct(m.nrr)} GRR {_pct(m.grr)}")
    if fig.get("excluded"):
        lines.append("excluded: " + excluded_text(fig["excluded"]))
    if fig.get("cohort_note"):
        lines.append("note: " + fig["cohort_note"])
    if fig.get("provisional"):
        lines.append("note: " + fig["provisional"])
    return "\n".join(lines)


def nrr_csv(fig: dict) -> str:
    """The figures as a CSV for a spreadsheet: a segment value that starts like a formula is neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["view", "period", "window", "level", "segment_by", "segment_value", *_ROWS, "provisional",
                "excluded_records", "excluded_start_arr", "excluded_end_arr"])
    rows = [("family", "", "", fig["family"]), ("naive", "", "", fig["naive"])]
    rows += [("family", s["by"], s["value"], s["family"]) for s in fig["segments"]]
    ex = fig.get("excluded")
    # the records left out of ARR belong to no one segment: their figures go on the two whole-view rows
    totals = [ex["records"], ex["start"]["arr"], ex["end"]["arr"]] if ex else [0, "0.00", "0.00"]
    for level, by, value, m in rows:
        d = m.as_json(naive=level == "naive")
        # only the text cells: a figure such as -500.00 stays a number
        w.writerow([*csv_row([fig["view"], fig["period"], fig["window"], level, by, value]),
                    *[d.get(k, "") for k in _ROWS], "true" if fig.get("provisional") else "false",
                    *(totals if not by else ["", "", ""])])
    return buf.getvalue()


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)
