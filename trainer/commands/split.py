"""`python -m trainer split --data in.jsonl --val-fraction 0.1 --seed S --out-train a.jsonl --out-val b.jsonl`.

Splits a JSONL trajectory file by game (whole lines, byte for byte) into a training and a
validation file. The split is the same seeded split `bc` makes by itself, so
`bc --data a.jsonl --val-data b.jsonl` sees the games `bc --data in.jsonl` would. Every line
is checked first; both outputs are written to temp files and renamed only when complete,
so a failure leaves no half-written file.
"""

from __future__ import annotations

import json
import logging
import sys

from trainer.atomic_files import atomic_path
from trainer.config import load_config
from trainer.config.offline import SplitConfig
from trainer.runtime import setup_logging
from trainer.sources.offline_data import OfflineDataError, check_file
from trainer.sources.offline_source import split_episodes

log = logging.getLogger("trainer")


def read_episode_lines(path) -> list[bytes]:
    check_file(path)
    lines = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ep = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise OfflineDataError(f"{path}:{lineno}: malformed JSON: {exc}") from None
            if not isinstance(ep, dict) or not isinstance(ep.get("steps"), list) or not ep["steps"]:
                raise OfflineDataError(f"{path}:{lineno}: expected an object with a non-empty 'steps' list")
            lines.append(line if line.endswith(b"\n") else line + b"\n")
    if not lines:
        raise OfflineDataError(f"{path}: no episodes")
    return lines


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(SplitConfig, argv, prog="python -m trainer split", description=__doc__.split("\n\n")[0])
    setup_logging(cfg.log_level)
    try:
        lines = read_episode_lines(cfg.data)
        if len(lines) < 2:
            raise OfflineDataError(f"{cfg.data}: one game cannot be split")
        if cfg.out_train.resolve() == cfg.out_val.resolve():
            raise OfflineDataError("--out-train and --out-val name the same file")
    except OfflineDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    val = split_episodes(len(lines), cfg.val_fraction, cfg.seed)
    with atomic_path(cfg.out_train) as train_tmp, atomic_path(cfg.out_val) as val_tmp:
        train_tmp.write_bytes(b"".join(l for l, v in zip(lines, val) if not v))
        val_tmp.write_bytes(b"".join(l for l, v in zip(lines, val) if v))
    log.info("%s: %d games -> %s (%d) and %s (%d)", cfg.data, len(lines), cfg.out_train,
             int((~val).sum()), cfg.out_val, int(val.sum()))
    return 0
