"""RevOps' YAML rules: loaded, schema-checked and turned into frozen, typed rules (errors carry file:line)."""
from .loader import RuleSet, check, load, schemas
from .model import Condition, MatchRule, Qualified, TieBreak

__all__ = ["Condition", "MatchRule", "Qualified", "RuleSet", "TieBreak", "check", "load", "schemas"]
