"""What to grant or deploy when the integration user cannot see an object or field the config names: the
engine's own objects and fields come with salesforce/; the org's own (a subscription object, the fields rules
and segments read) need Read for the integration user, which no deploy of salesforce/ gives."""
from __future__ import annotations

from collections.abc import Sequence

READS_EXAMPLE = "salesforce/examples/NRR_Engine_Reads.permissionset-meta.xml"


def no_object_fix(obj: str, fields: Sequence[str] = (), own: bool = False) -> str:
    """Why object `obj` is not there for the integration user, and the fix; `fields`: the ones the config names
    of it; `own`: the engine writes it (the KPI snapshot object)."""
    if own:
        return (f"object {obj} does not exist in the org (or the integration user cannot see it): deploy "
                f"salesforce/ (it creates KPI_Snapshot__c) and assign its NRR_Engine_Integration permission set to "
                f"the integration user, or fix the object name")
    named = f" and its fields {', '.join(dict.fromkeys(fields))}" if fields else ""
    return (f"object {obj} does not exist in the org, or the integration user cannot read it: grant Read "
            f"on {obj}{named} to the integration user (a permission set such as {READS_EXAMPLE}, with your object's "
            f"and fields' names), or fix the object name")


def no_field_fix(obj: str, name: str) -> str:
    """The fix for a field the engine reads that describe does not show the integration user."""
    return (f"grant the integration user read access to {obj}.{name} (field-level security, e.g. in a permission "
            f"set such as {READS_EXAMPLE}), or fix the field name")
