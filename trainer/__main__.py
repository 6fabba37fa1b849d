"""`python -m trainer [COMMAND] ...`; with no command (or only flags) it runs the daemon.

Commands:
  train      the self-play training daemon (default)
  imitation  supervised imitation from an HDF5 file
  bc         behaviour cloning from JSONL trajectories
  split      split a JSONL trajectory file into train/validation files
  iql, cql   offline RL from trajectories or HDF5
  run        actor + daemon + dashboard in one supervised command
  replay     replay maintenance: `replay migrate --db URL` (PostgreSQL)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "trainer.commands.train",
    "imitation": "trainer.commands.imitation",
    "bc": "trainer.commands.bc",
    "split": "trainer.commands.split",
    "iql": "trainer.commands.iql",
    "cql": "trainer.commands.cql",
    "run": "trainer.launcher",
    "replay": "trainer.replay.postgres.__main__",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        name, argv = argv[0], argv[1:]
    else:
        name = "train"
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
    module = importlib.import_module(COMMANDS[name])
    return module.main(argv) or 0


if __name__ == "__main__":
    sys.exit(main())
