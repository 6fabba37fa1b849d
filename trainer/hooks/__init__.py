"""Periodic side effects of the loop (checkpoint, publish, stats, log, eval), one per file."""

from trainer.hooks.base import Hook

__all__ = ["Hook"]
