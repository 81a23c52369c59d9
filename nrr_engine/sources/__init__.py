"""Sources and sinks of org data: a local org (CSV folder + SQLite working copy) and Salesforce."""
from ..ids import sf_id
from .local_org import LocalOrg

__all__ = ["LocalOrg", "sf_id"]
