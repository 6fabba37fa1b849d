"""`python -m trainer split --data in.jsonl --val-fraction 0.1 --seed S --out-train a.jsonl --out-val b.jsonl`.

Splits a JSONL trajectory file by game (whole lines, byte for byte) into a training and a
validation file. The split is the same seeded split `bc` makes by itself, so
`bc --data a.jsonl --val-data b.jsonl` sees the games `bc --data in.jsonl` would. Every line
is checked first; both outputs are written to temp files and renamed only when complete,
so a failure leaves no half-written file. An output may not be the input or the other
output (same path, or a link to the same file): a second run would split a file that had
already lost its validation games.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from trainer.atomic_files import atomic_path
from trainer.config import load_config
from trainer.config.offline import SplitConfig
from trainer.runtime import setup_logging
from trainer.sources.offline_data import OfflineDataError, check_file
from trainer.sources.offline_data.jsonl import parse_episode_line
from trainer.sources.offline_source import validation_games

log = logging.getLogger("trainer")


def read_episode_lines(path: Path) -> list[bytes]:
    check_file(path)
    lines = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parse_episode_line(line, f"{path}:{lineno}")
            lines.append(line if line.endswith(b"\n") else line + b"\n")
    if not lines:
        raise OfflineDataError(f"{path}: no episodes")
    return lines


def same_file(a: Path, b: Path) -> bool:
    """The same path once resolved, or two names (hard or symbolic links) of one file."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_outputs(cfg: SplitConfig) -> None:
    for flag, out in (("--out-train", cfg.out_train), ("--out-val", cfg.out_val)):
        if same_file(out, cfg.data):
            raise OfflineDataError(f"{out}: {flag} is the input file --data; write the split elsewhere")
    if same_file(cfg.out_train, cfg.out_val):
        raise OfflineDataError(f"{cfg.out_val}: --out-train and --out-val name the same file")


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(SplitConfig, argv, prog="python -m trainer split", description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        check_outputs(cfg)
        lines = read_episode_lines(cfg.data)
        if len(lines) < 2:
            raise OfflineDataError(f"{cfg.data}: one game cannot be split")
    except OfflineDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    val = validation_games(len(lines), cfg.val_fraction, cfg.seed)
    with atomic_path(cfg.out_train) as train_tmp, atomic_path(cfg.out_val) as val_tmp:
        train_tmp.write_bytes(b"".join(line for line, v in zip(lines, val) if not v))
        val_tmp.write_bytes(b"".join(line for line, v in zip(lines, val) if v))
    log.info(
        "%s: %d games -> %s (%d) and %s (%d)",
        cfg.data,
        len(lines),
        cfg.out_train,
        int((~val).sum()),
        cfg.out_val,
        int(val.sum()),
    )
    return 0
