"""`python -m trainer replay migrate --db URL`: add the trainer's `seq` column once.

`python -m trainer.replay.postgres migrate` is the same command under its older name.

Adding it rewrites `transitions` while writers wait (see schema.py), which the trainer does
by itself only for a small table; run this at a quiet moment for a big one.
"""

from __future__ import annotations

import argparse
import sys
import time

from trainer.replay.backend import is_postgres_url, redact_url
from trainer.replay.postgres.connection import connect
from trainer.replay.postgres.schema import SEQ_COLUMN, add_seq_column, table_names
from trainer.replay.schema import SchemaError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer replay", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser(
        "migrate", help=f"add the {SEQ_COLUMN!r} column and its index to transitions, whatever its size"
    )
    migrate.add_argument("--db", required=True, help="postgresql://user:password@host:port/database")
    args = parser.parse_args(argv)
    if not is_postgres_url(args.db):
        print(
            f"error: --db {args.db!r} is not a postgresql:// URL (a SQLite replay needs no migration)",
            file=sys.stderr,
        )
        return 2
    where = redact_url(args.db)
    try:
        conn = connect(args.db, application_name="selfplay-trainer-migrate")
        with conn:
            if "transitions" not in table_names(conn):
                print(f"error: {where} has no transitions table", file=sys.stderr)
                return 2
            t0 = time.monotonic()
            added = add_seq_column(conn, max_bytes=None)
    except (SchemaError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if added:
        print(f"added {SEQ_COLUMN!r} to transitions in {where} in {time.monotonic() - t0:.1f}s")
    else:
        print(f"transitions in {where} already has {SEQ_COLUMN!r}; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
