"""Offline test checkpoints of real architectures (see tiny.py)."""

from swiftlite.testing.tiny import BUILDERS, build_tiny_checkpoint

__all__ = ["BUILDERS", "build_tiny_checkpoint"]
