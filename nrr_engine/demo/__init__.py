"""The demo org (package data) and the deterministic generator of synthetic orgs of any size."""
from .generator import DEMO_AS_OF, generate, write_demo_config

__all__ = ["DEMO_AS_OF", "generate", "write_demo_config"]
