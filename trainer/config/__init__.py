"""Typed, serialisable configuration for every command (pydantic models)."""

from trainer.config.loader import ConfigError, load_config
from trainer.config.daemon import DaemonConfig

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
