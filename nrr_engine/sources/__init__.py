"""Sources and sinks of org data: a local org (CSV folder + SQLite working copy) and Salesforce."""
from .local_org import LocalOrg, sf_id

__all__ = ["LocalOrg", "sf_id"]
