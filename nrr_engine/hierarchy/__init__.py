"""Account hierarchies: parent links to trees (roots, depth, ultimate parent), guarded against bad data."""
from .tree import Tree, build_tree

__all__ = ["Tree", "build_tree"]
