"""Offline test checkpoints of real architectures (see tiny.py and families/)."""

from swiftlite.testing.tiny import build_tiny_checkpoint, discover_builders

__all__ = ["build_tiny_checkpoint", "discover_builders"]
