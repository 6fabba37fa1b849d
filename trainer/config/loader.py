"""Build a command line from a pydantic model, and merge CLI > env > TOML > defaults.

Each command declares its settings once, as a pydantic model whose field descriptions are
the `--help` texts. This module turns the model into an argparse parser (field `batch_size`
becomes `--batch-size`, a bool `augment` becomes `--augment/--no-augment`), reads
`TRAINER_BATCH_SIZE`-style environment variables and an optional TOML file (`--config`
or `TRAINER_CONFIG`), and validates the merged values in one place. Any invalid value exits
with code 2 and one line naming the setting, like argparse does for its own errors.

Every number is bounded, also where its field says nothing more (`default_bounds_error`),
so a setting added later is bounded without anyone remembering to.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

ENV_PREFIX = "TRAINER_"
M = TypeVar("M", bound=BaseModel)

# Defaults for a side of a number's range that its field leaves open. A float must be
# finite and at most a billion in size (a sleep or a lock timeout of more overflows in C);
# an int must fit a C int (thread counts, seeds and tensor sizes end up in one).
FLOAT_LIMIT = 1e9
INT_LIMIT = 2**31 - 1


class ConfigError(SystemExit):
    """Exit code 2 with a one-line message, the argparse convention for usage errors."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_name(field: str, prefix: str = ENV_PREFIX) -> str:
    return prefix + field.upper()


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def _choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return None


def add_model_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], env_prefix: str = ENV_PREFIX
) -> None:
    """One flag per field; defaults are SUPPRESSed so only flags the user gave are seen."""
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        default=argparse.SUPPRESS,
        help=f"TOML file of settings (keys are the flag names, with - or _); "
        f"also {env_prefix}CONFIG. Precedence: flags > {env_prefix}* env > TOML > defaults.",
    )
    for name, field in model.model_fields.items():
        help_text = (field.description or "").replace("%", "%%")
        if field.is_required():
            help_text += f" [required; env {env_name(name, env_prefix)}]"
        else:
            default = field.default if field.default is not None else "unset"
            help_text += f" [default: {default}; env {env_name(name, env_prefix)}]"
        if _is_bool(field.annotation):
            parser.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            choices = _choices(field.annotation)
            parser.add_argument(
                flag_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
                help=help_text,
            )


def _has_bound(field: FieldInfo, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(m, kinds) for m in field.metadata)


def default_bounds_error(field: FieldInfo, value: Any) -> str | None:
    """Why `value` is outside the range every number gets by default, or None. A field's own
    ge/gt (le/lt) replaces the default lower (upper) limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "Input should be a finite number"
    limit = FLOAT_LIMIT if isinstance(value, float) else INT_LIMIT
    if value > limit and not _has_bound(field, (annotated_types.Le, annotated_types.Lt)):
        return f"Input should be less than or equal to {limit:.10g}"
    if value < -limit and not _has_bound(field, (annotated_types.Ge, annotated_types.Gt)):
        return f"Input should be greater than or equal to {-limit:.10g}"
    return None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept a [trainer] table or top-level keys, and dashes or underscores.
    if isinstance(data.get("trainer"), dict):
        data = data["trainer"]
    return {k.replace("-", "_"): v for k, v in data.items()}


def merge_sources(
    model: type[M],
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> M:
    environ = os.environ if environ is None else environ
    cli = dict(cli)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config_file = cli.pop("config", None) or environ.get(env_prefix + "CONFIG")
    if config_file:
        for k, v in _read_toml(config_file).items():
            if k not in model.model_fields:
                raise ConfigError(f"unknown setting {k!r} in {config_file}")
            values[k], origin[k] = v, f"{flag_name(k)} in {config_file}"
    for name in model.model_fields:
        var = env_name(name, env_prefix)
        if var in environ:
            values[name], origin[name] = environ[var], var
    for name, v in cli.items():
        values[name], origin[name] = v, flag_name(name)
    try:
        cfg = model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        where = origin.get(field, flag_name(field) if field else "settings")
        raise ConfigError(f"invalid value for {where}: {err['msg']}") from None
    for name, field in model.model_fields.items():
        problem = default_bounds_error(field, getattr(cfg, name))
        if problem:
            raise ConfigError(f"invalid value for {origin.get(name, flag_name(name))}: {problem}")
    return cfg


def load_config(
    model: type[M],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    environ: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> M:
    """`env_prefix` is per program (TRAINER_, ACTOR_, EVALUATOR_) so that variables set
    for the daemon in a shared environment (docker-compose, the launcher) do not leak
    into the actor or the evaluator."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser, model, env_prefix)
    ns = parser.parse_args(argv)
    return merge_sources(model, vars(ns), environ, env_prefix)
