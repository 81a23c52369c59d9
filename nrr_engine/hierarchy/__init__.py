"""Account hierarchies: parent links to trees (roots, depth, ultimate parent), guarded against bad data,
and their repair from matching rules."""
from .tree import Tree, build_tree, forest, partition

__all__ = ["Tree", "build_tree", "forest", "partition"]
