"""What a run reads and writes: every field with the types it accepts, checked against the org (describe on
Salesforce, the CSV headers locally) by the run at start and by `validate`."""
from __future__ import annotations

from .config import Settings
from .metrics import snapshot
from .model import FieldNeed

_NUMBER = ("double", "currency", "int", "percent", "long")
# The record currency field of a multi-currency org (Salesforce Help: Multiple Currencies): the subscriptions'
# currency when `arr.subscriptions.currency` names none; an export without it is in one currency
RECORD_CURRENCY = "CurrencyIsoCode"
_DATE = ("date", "datetime")


def field_needs(settings: Settings, ruleset, extra_fields: tuple[str, ...] = ()) -> list[FieldNeed]:
    """Every field the run reads or writes, with the types it accepts (checked against describe at start)."""
    needs = [FieldNeed("Account", "Name", "accounts"), FieldNeed("Account", "ParentId", "views", optional=True)]
    repaired = {r.view for r in ruleset.match}
    for v in settings.views:
        where = f"views[{v.name}]"
        if v.parent_field:
            needs.append(FieldNeed("Account", v.parent_field, f"{where}.parent_field", ("reference",),
                                   write=v.name in repaired))
        if v.by:
            needs.append(FieldNeed("Account", v.by, f"{where}.by"))
        types = {"ultimate_parent": ("reference", "string"), "depth": _NUMBER, "child_count": _NUMBER,
                 "arr": ("currency", "double")}
        for kind, fname in v.fields.items():
            needs.append(FieldNeed("Account", fname, f"{where}.fields.{kind}", types.get(kind, ()), write=True))
    a = settings.arr
    if a.source == "account_field" and a.account_field:
        needs.append(FieldNeed("Account", a.account_field, "arr.account_field", _NUMBER))
    if a.source == "subscriptions" and a.subscriptions:
        sub = a.subscriptions
        for key, fname, types in (("account", sub.account, ("reference", "string")), ("start", sub.start, _DATE),
                                  ("end", sub.end, _DATE), ("amount", sub.amount, _NUMBER),
                                  ("product", sub.product, ()), ("currency", sub.currency, ())):
            if fname:
                needs.append(FieldNeed(sub.object, fname, f"arr.subscriptions.{key}", types))
        if not sub.currency:   # read when the object has it (a multi-currency org), so mixed currencies stop the run
            needs.append(FieldNeed(sub.object, RECORD_CURRENCY, "arr.subscriptions.currency", optional=True))
    for f in (*settings.segments, *extra_fields):
        needs.append(FieldNeed("Account", f, "report.segments"))
    for rule in ruleset.match:
        for f in rule.fields():
            needs.append(FieldNeed("Account", f, f"rule {rule.name} ({rule.location.file}:{rule.location.line})",
                                   optional=rule.skip_when_missing))
    h = settings.hierarchy
    if h.locked_field:
        needs.append(FieldNeed("Account", h.locked_field, "hierarchy.locked_field", ("boolean",),
                               optional=not h.locked_field_required))
    if ruleset.match and h.missing_parents == "placeholder":
        needs.append(FieldNeed("Account", h.placeholder_key_field, "hierarchy.placeholder_key_field", ("string",),
                               create=True, external_id=True, optional=True))
    needs += [FieldNeed("Account", f, "hierarchy", optional=True) for f in ("Website", "BillingCountry", "CreatedDate")]
    if settings.snapshots_enabled:
        obj = settings.snapshot_object
        needs.append(FieldNeed(obj, snapshot.KEY, "snapshots.object", ("string",), write=True, create=True,
                               external_id=True, delete=True))  # an absorbed family's snapshots are deleted
        needs += [FieldNeed(obj, f, "snapshots.object", write=True, create=True) for f in snapshot.FIELDS]
    return needs
