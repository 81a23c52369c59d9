"""RevOps' YAML rules: loaded, schema-checked and turned into frozen, typed rules (errors carry file:line)."""
from .kinds import KINDS, DomainRule, KeyRule, MappingRule, NameRule
from .loader import RuleSet, check, load, schemas
from .model import Condition, MatchRule, Qualified, TieBreak

__all__ = ["Condition", "DomainRule", "KINDS", "KeyRule", "MappingRule", "MatchRule", "NameRule", "Qualified",
           "RuleSet", "TieBreak", "check", "load", "schemas"]
