"""Typed, serialisable configuration for every command (pydantic models)."""

from trainer.config.daemon import DaemonConfig
from trainer.config.loader import ConfigError, load_config

__all__ = ["ConfigError", "DaemonConfig", "load_config"]
