"""Which replay backend a `--db` value names: a SQLite file path or a `postgresql://` URL.

The one place that decides; everything else asks for a reader or a writer here and uses the
interface the two share (`ReplayReader` / `PgReplayReader`, `ReplayWriter` / `PgReplayWriter`).
psycopg is imported only when a URL is used, so SQLite-only installs never need it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BeforeValidator, PlainSerializer

from trainer.games import Game, GameSpec
from trainer.replay.schema import MissingMetadataError, read_game_spec

if TYPE_CHECKING:
    from trainer.replay.postgres.reader import PgReplayReader
    from trainer.replay.postgres.writer import PgReplayWriter
    from trainer.replay.reader import ReplayReader
    from trainer.replay.writer import ReplayWriter

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(URL_SCHEMES)


def redact_url(db: str | Path) -> str:
    """`db` with any password replaced by `***`: safe for logs, stats.json and checkpoints."""
    text = str(db)
    if not is_postgres_url(text):
        return text
    text = re.sub(r"^(postgres(?:ql)?://[^:/@?#]*):[^@/?#]*@", r"\1:***@", text)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def _replay_location(value: object) -> str:
    if isinstance(value, Path):
        return str(value.expanduser())
    if not isinstance(value, str) or not value:
        raise ValueError("must be a SQLite file path or a postgresql:// URL")
    if "://" in value and not is_postgres_url(value):
        raise ValueError(f"{redact_url(value)!r}: only postgresql:// (or postgres://) URLs are supported")
    return value if is_postgres_url(value) else str(Path(value).expanduser())


# A `--db` setting: a path stays a path (as a string), a URL stays a URL.
ReplayLocation = Annotated[str, BeforeValidator(_replay_location)]
# The same, written out (config dumps into checkpoints) without its password.
RedactedReplayLocation = Annotated[ReplayLocation, PlainSerializer(redact_url, return_type=str)]


def open_replay_reader(db: str | Path, env_id: str, **kw) -> ReplayReader | PgReplayReader:
    if is_postgres_url(db):
        from trainer.replay.postgres.reader import PgReplayReader

        return PgReplayReader(str(db), env_id, **kw)
    from trainer.replay.reader import ReplayReader

    return ReplayReader(db, env_id, **kw)


def open_replay_writer(
    db: str | Path, game: Game, with_model_step: bool = True
) -> ReplayWriter | PgReplayWriter:
    if is_postgres_url(db):
        from trainer.replay.postgres.writer import PgReplayWriter

        return PgReplayWriter(str(db), game, with_model_step=with_model_step)
    from trainer.replay.writer import ReplayWriter

    return ReplayWriter(db, game, with_model_step=with_model_step)


def read_replay_spec(db: str | Path, env_id: str) -> GameSpec | None:
    """The game's shapes from the replay's `game_metadata`, or None while it cannot say yet
    (no file or table, server unreachable, no row for a game the trainer does not know).
    Raises SchemaError for what waiting will not fix (a bad password, a missing database)."""
    if is_postgres_url(db):
        reader = open_replay_reader(db, env_id)
        try:
            return reader.spec if reader.probe() is None else None
        finally:
            reader.close()
    if not Path(db).exists():
        return None
    from trainer.replay.reader import sqlite_ro_uri

    try:
        conn = sqlite3.connect(sqlite_ro_uri(db), uri=True, timeout=5.0)
        try:
            return read_game_spec(conn, env_id)
        finally:
            conn.close()
    except MissingMetadataError:
        return None  # unknown game, no metadata row yet: wait for the actor to write it
    except sqlite3.DatabaseError as exc:
        log.debug("replay DB %s not readable yet: %s", db, exc)
        return None
