"""Why a source has no batch right now: a kind the code decides on, a sentence for people.

The loop, the stats hook and the logs decide by `kind` (back off or poll briefly, give up
after --max-wait or not, is this news for the dashboard); `detail` carries live counts and
paths and is only ever shown, never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WaitKind(StrEnum):
    STARTING = "starting"  # the source has not looked at its data yet
    LOADING = "loading"  # reading a backlog of rows; batches follow shortly
    PREPARING = "preparing"  # batches are being made; one is expected any moment
    NO_DB = "no_db"  # the replay DB does not exist (yet)
    NO_TABLE = "no_table"  # the DB exists but has no transitions table (yet)
    NO_METADATA = "no_metadata"  # no game_metadata row for the env_id (yet)
    TOO_FEW_ROWS = "too_few_rows"  # fewer rows than --min-rows
    NO_USABLE_ROWS = "no_usable_rows"  # rows exist but none could be decoded
    REUSE_LIMIT = "reuse_limit"  # the --max-reuse budget is spent until actors write more
    DB_BUSY = "db_busy"  # a writer holds the DB; retried shortly
    DB_UNREADABLE = "db_unreadable"  # the DB cannot be read right now (e.g. a hot journal)
    CONNECTION_LOST = "connection_lost"  # a replay server went away; reconnecting
    NO_BATCH = "no_batch"  # nothing more specific is known


# Waits that end by themselves within moments, as long as actors keep writing: the loop
# polls these often instead of backing off, and --max-wait does not count them.
BRIEF_KINDS = frozenset({WaitKind.STARTING, WaitKind.LOADING, WaitKind.PREPARING, WaitKind.REUSE_LIMIT})


@dataclass(frozen=True)
class WaitReason:
    kind: WaitKind
    detail: str = ""

    @property
    def brief(self) -> bool:
        return self.kind in BRIEF_KINDS

    def __str__(self) -> str:
        return self.detail or self.kind.value


NO_BATCH = WaitReason(WaitKind.NO_BATCH, "no batch available")
