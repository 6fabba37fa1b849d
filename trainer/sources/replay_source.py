"""The daemon's batch source: the live replay DB, tailed by a background thread.

    training thread                          worker thread (owns reader + window + RNG)
    ---------------                          ------------------------------------------
    next_batch() -> pop a ready batch  <---  every poll_interval: read new rows in chunks
                    (~20 µs)                 between polls: sample the newest W rows,
                                             augment, make tensors, queue (a few ahead,
                                             refilled `burst` batches at a time)

The training thread never touches SQLite or the window, so a slow query or a writer holding
the lock (rollback-journal actors) costs the step nothing; and the window needs no lock
because only the worker reads and writes it.

Data use is bounded by the reuse limit: samples trained on <= max_reuse * rows_seen, where
rows_seen counts every usable row of env_id ingested since the run began (restarts
included); a batch whose step was skipped as non-finite is given back (`not_trained`).
When it is reached, `next_batch()` returns None with a "reuse limit" reason until actors
write more rows.

Resume: each queued batch carries the worker's state as of producing it (cursor, rows seen,
bad-row counts, the RNG state before its burst and its place in the burst). `state_dict()`
returns the state of the last batch handed out, so a checkpoint never counts rows or RNG
draws of batches that were prepared but not trained on; on resume the interrupted burst is
drawn again and its batches already trained on are dropped.
`load_state_dict()` refills the window with the newest W usable rows up to the cursor,
which is what an uninterrupted run held at that point.

A DB that cannot be read mid-run (a hot journal left by a killed rollback-journal writer, a
damaged file, the file deleted) stops only the new rows: batches go on from the window while
the reuse budget allows, `replay_status`/`replay_error` in stats say why no rows arrive, and
once the budget is spent that is the waiting reason. A DB replaced under the open connection
(another file at the path, or fewer rows than the cursor) is re-opened and read from its
first row; rows_seen keeps counting, so the reuse budget grows with the new rows.

With --replay-keep-rows (PostgreSQL), the worker also deletes rows far behind the window
between polls, once caught up (`trainer/replay/retention.py`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import torch

from trainer.augment import Augmenter
from trainer.config.daemon import DaemonConfig
from trainer.games import GameSpec
from trainer.replay.backend import open_replay_reader
from trainer.replay.reader import BAD_REASONS, BAD_UNREADABLE, DecodedRows, read_failure
from trainer.replay.schema import SchemaError
from trainer.replay.window import ReplayWindow, window_size
from trainer.sources.wait_reason import NO_BATCH, WaitKind, WaitReason
from trainer.training.batch import Batch

log = logging.getLogger(__name__)

STATE_VERSION = 1
RATE_HORIZON_S = 60.0  # new_rows_per_sec is measured over this span
INGEST_SLICE_S = 0.25  # at most this long ingesting before preparing batches again
BUSY_RETRY_S = 0.05  # next poll after "database is locked"
RECONNECT_MAX_S = 30.0  # cap of the backoff while a replay server is unreachable


def _open_retention(cfg: DaemonConfig):
    """The row deleter for --replay-keep-rows (PostgreSQL; the config refuses SQLite), or None."""
    if not cfg.replay_keep_rows:
        return None
    from trainer.replay.retention import PgRetention

    return PgRetention(cfg.db, cfg.env_id, cfg.replay_keep_rows, interval_s=10 * cfg.poll_interval)


class ReplaySource:
    """BatchSource over the replay DB for `cfg.env_id` (see the module docstring)."""

    epochs_completed = 0  # a moving window has no epochs

    def __init__(
        self,
        cfg: DaemonConfig,
        device: str | torch.device = "cpu",
        prefetch: int = 32,
        burst: int = 16,
        chunk_rows: int = 4096,
        busy_timeout_s: float = 0.1,
        max_block_s: float = 0.5,
    ):
        self.cfg = cfg
        self.device = torch.device(device)
        # The worker refills the queue `burst` batches at a time (one vectorised sample and
        # augment, one wake-up) once it has room for them: every wake-up of the worker
        # competes with the training thread for the GIL and, on a busy 2-core box, for a
        # core, so fewer and larger ones keep the step fast (benchmarks/daemon_bench.py
        # compares burst sizes). The prepared batches are small and at most a fraction of a
        # second old at MLP speeds.
        self.prefetch = max(1, prefetch)
        self.burst = max(1, min(burst, self.prefetch))
        # How long next_batch() blocks while the worker is loading or preparing before it
        # returns None ("loading ..."); waiting reasons return at once.
        self.max_block_s = max_block_s
        # Short busy timeout: the worker retries on its own schedule instead of stalling
        # batch preparation while a rollback-journal writer commits.
        self._reader = open_replay_reader(
            cfg.db, cfg.env_id, chunk_rows=chunk_rows, busy_timeout_s=busy_timeout_s
        )
        self._retention = _open_retention(cfg)
        self._rng = np.random.default_rng(cfg.seed)
        self._max_window = cfg.window if cfg.window > 0 else cfg.window_cap

        # Worker state (written by the worker only, once started).
        self._cursor = 0
        self._pending: list = []  # the reader's rows below the cursor still to come (PostgreSQL)
        self._rows_seen = 0
        self._bad: Counter = Counter()
        self._policy_onehot = 0
        self._replay_rows: int | None = None  # rows of env_id in the DB, usable or not
        self._window: ReplayWindow | None = None
        self._augmenter: Augmenter | None = None
        self._legal: slice | None = None
        self._ready = False
        # Set once the first ingest reached the end of the DB: before that the window would
        # be a slice of the oldest rows, not the newest W, so no batch is made from it.
        self._caught_up = False
        self._ingest_events: deque = deque()  # (monotonic time, rows)
        self._busy_retries = 0
        # Why no new rows can be read right now (a hot journal, a damaged file, a deleted DB),
        # while batches may still come from the window; None while reading works.
        self._db_problem: WaitReason | None = None
        self._db_problem_logged = False  # a warning went out: say when it is over
        self._reconnect_delay = 0.0  # backoff while a replay server is unreachable
        # After a resume: re-create the interrupted burst and drop the batches already
        # trained on, so the next batches are those an uninterrupted run would train on.
        self._replay_burst = 0
        self._replay_skip = 0

        # Training-thread state.
        self._samples = 0  # samples trained on (the reuse budget's numerator)
        self._last_state: dict[str, Any] = self._worker_state(self._rng.bit_generator.state, 0, 0)
        self._waiting_reason: WaitReason | None = None

        # Hand-over between the threads.
        self._queue: deque = deque()  # (Batch, state dict as of that batch)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._status: WaitReason | None = WaitReason(
            WaitKind.STARTING, "starting: opening the replay DB"
        )  # None while batches are coming
        self._busy = True  # True: loading/preparing, a batch is expected soon
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # --- BatchSource -------------------------------------------------------------------------
    @property
    def waiting_reason(self) -> WaitReason | None:
        return self._waiting_reason

    @property
    def exhausted(self) -> bool:
        return False

    def next_batch(self) -> Batch | None:
        if self._thread is None:
            self._start()
        deadline = None
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._queue:
                    batch, state = self._queue.popleft()
                    break
                if not self._busy:
                    self._waiting_reason = self._status or NO_BATCH
                    return None
                now = time.monotonic()
                deadline = deadline or now + self.max_block_s
                if now >= deadline:
                    self._waiting_reason = self._status or WaitReason(WaitKind.PREPARING, "preparing batches")
                    return None
                self._cond.wait(deadline - now)
            if len(self._queue) <= self.prefetch - self.burst:
                self._wake.set()
        self._samples += len(batch)
        self._last_state = state
        self._waiting_reason = None
        return batch

    def not_trained(self, batch: Batch) -> None:
        self._samples -= len(batch)
        self._wake.set()  # a worker idle at the reuse limit may prepare this batch's worth again

    def stats(self) -> dict[str, Any]:
        rows_seen = self._rows_seen
        newest_ts = self._reader.newest_timestamp
        out: dict[str, Any] = {
            "window_size": int(self._current_window()),
            "window_rows": int(self._window.sample_size) if self._window is not None else 0,
            "rows_seen": int(rows_seen),
            "replay_buffer_size": int(self._replay_rows or 0),
            "new_rows_per_sec": self._new_rows_per_sec(),
            "reuse_ratio": (self._samples / rows_seen) if rows_seen else 0.0,
            "replay_samples": int(self._samples),
            "bad_rows": int(sum(self._bad.values())),
            **{f"bad_rows_{r}": int(self._bad.get(r, 0)) for r in BAD_REASONS},
            "policy_onehot_rows": int(self._policy_onehot),
            "newest_row_age_s": (max(0.0, time.time() - newest_ts) if newest_ts is not None else None),
            "actor_model_step": self._reader.model_step,
            "replay_cursor": int(self._cursor),
            "db_busy_retries": int(self._busy_retries),
            "replay_rows_deleted": int(self._retention.deleted) if self._retention else 0,
            "replay_table_rows": self._retention.table_rows if self._retention else None,
            "replay_status": problem.kind.value if (problem := self._db_problem) else "ok",
            "replay_error": problem.detail if problem else None,
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        state = dict(self._last_state)
        state["samples"] = int(self._samples)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict() must be called before the first next_batch()")
        if int(state.get("version", STATE_VERSION)) != STATE_VERSION:
            raise ValueError(f"replay source state version {state.get('version')} is not {STATE_VERSION}")
        self._cursor = int(state["cursor"])
        self._pending = [tuple(int(x) for x in p) for p in state.get("pending", [])]
        self._rows_seen = int(state["rows_seen"])
        self._samples = int(state["samples"])
        self._bad = Counter({str(k): int(v) for k, v in dict(state.get("bad_rows", {})).items()})
        self._policy_onehot = int(state.get("policy_onehot_rows", 0))
        if state.get("rng"):
            self._rng.bit_generator.state = state["rng"]
            if int(state.get("batch_size", 0)) == self.cfg.batch_size:
                self._replay_burst = int(state.get("rng_burst", 0))
                self._replay_skip = int(state.get("rng_skip", 0))
        self._last_state = self._worker_state(
            self._rng.bit_generator.state, self._replay_burst, self._replay_skip
        )

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("replay worker did not stop within 5 s")
        else:
            self._reader.close()

    # --- inspection (tests, benchmarks) --------------------------------------------------------
    @property
    def window(self) -> ReplayWindow | None:
        """The worker's window; only safe to read once `close()` returned."""
        return self._window

    # --- worker ------------------------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replay-source", daemon=True)
        self._thread.start()

    def _worker_state(self, rng_before: dict, burst: int, skip: int) -> dict[str, Any]:
        """The state to resume from once batch `skip` of a burst of `burst` batches, drawn
        with the RNG in state `rng_before`, has been trained on."""
        return {
            "version": STATE_VERSION,
            "cursor": int(self._cursor),
            "pending": [list(p) for p in self._pending],
            "rows_seen": int(self._rows_seen),
            "bad_rows": {k: int(v) for k, v in self._bad.items()},
            "policy_onehot_rows": int(self._policy_onehot),
            "rng": rng_before,
            "rng_burst": int(burst),
            "rng_skip": int(skip),
            "batch_size": int(self.cfg.batch_size),
        }

    def _set_status(self, status: WaitReason, busy: bool) -> None:
        if status != self._status and status is not None:
            # DEBUG only: the training loop logs each new waiting reason itself.
            log.debug("replay: %s", status)
        with self._cond:
            self._status, self._busy = status, busy
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            next_poll = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self._poll()
                if not self._produce():
                    self._wake.wait(timeout=max(0.0, next_poll - time.monotonic()))
                    self._wake.clear()
        except BaseException as exc:  # surfaced by next_batch(), never swallowed
            log.debug("replay worker failed", exc_info=True)
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            self._reader.close()
            if self._retention is not None:
                self._retention.close()

    def _poll(self) -> float:
        """Open the DB if needed and ingest new rows; returns seconds until the next poll."""
        try:
            if self._ready and (why := self._reader.replaced()) is not None:
                self._reopen(why)
            if not self._ready:
                reason = self._reader.probe()
                if reason is not None:
                    self._db_unavailable(reason)
                    return BUSY_RETRY_S if reason.kind == WaitKind.DB_BUSY else self.cfg.poll_interval
                self._setup()
            more = self._ingest()
            if not more:
                self._retain()
            self._db_readable()
            self._reconnect_delay = 0.0
            return 0.0 if more else self.cfg.poll_interval
        except ConnectionError as exc:
            # A replay server went away (restart, network): train on from the window and
            # reconnect with capped backoff; the reader continues from its cursor.
            self._reconnect_delay = min(
                RECONNECT_MAX_S, max(self.cfg.poll_interval, 2 * self._reconnect_delay)
            )
            self._db_unavailable(WaitReason(WaitKind.CONNECTION_LOST, str(exc)))
            return self._reconnect_delay
        except SchemaError as exc:
            # At start-up a file that is not SQLite is a clear error. Mid-run it is a DB being
            # replaced (a copy still in progress): keep training from the window, say why.
            # A file that breaks the contract (a missing column) is an error either way.
            if not (self._caught_up and isinstance(exc.__cause__, sqlite3.DatabaseError)):
                raise
            self._db_unavailable(WaitReason(WaitKind.DB_UNREADABLE, str(exc)))
            return self.cfg.poll_interval
        except sqlite3.DatabaseError as exc:
            reason = read_failure(exc, self._reader.db_path)
            if reason is None:
                raise
            if reason.kind == WaitKind.DB_BUSY:
                # A writer is committing (rollback journal): keep preparing batches from the
                # window and try again shortly.
                self._busy_retries += 1
                log.debug("replay DB busy (%s); retrying", exc)
                return BUSY_RETRY_S
            self._db_unavailable(reason)
            return self.cfg.poll_interval

    def _db_unavailable(self, reason: WaitReason) -> None:
        """No new rows can be read. Before the first batch that is the waiting reason; later,
        batches go on from the window and the reason shows once the reuse budget is spent."""
        if self._caught_up and (self._db_problem is None or self._db_problem.kind != reason.kind):
            log.warning(
                "replay: %s; training goes on from the %d rows in the window", reason, self._window_rows()
            )
            self._db_problem_logged = True
        self._db_problem = reason
        if not self._caught_up:
            self._set_status(reason, busy=False)

    def _db_readable(self) -> None:
        if self._db_problem is not None and self._db_problem_logged:
            log.info(
                "replay DB %s is readable again (after: %s)",
                self._reader.db_path,
                self._db_problem.kind.value,
            )
        self._db_problem, self._db_problem_logged = None, False

    def _window_rows(self) -> int:
        return self._window.sample_size if self._window is not None else 0

    def _reopen(self, why: str) -> None:
        log.warning(
            "replay DB %s: %s; re-opening it and reading it from the start "
            "(rows_seen keeps counting, the window keeps its rows)",
            self._reader.db_path,
            why,
        )
        self._reader.reopen()
        self._cursor, self._pending = 0, []
        self._replay_rows = 0
        self._ready = False
        if self._retention is not None:
            self._retention.reset()

    def _retain(self) -> None:
        """Delete rows far behind the window (--replay-keep-rows), never one not read yet."""
        if self._retention is None or not self._caught_up:
            return
        below = min([self._cursor + 1, *(lo for lo, *_ in self._pending)])
        deleted = self._retention.maybe_run(self._replay_rows or 0, self._current_window(), below)
        self._replay_rows = max(0, (self._replay_rows or 0) - deleted)

    def _setup(self) -> None:
        reader = self._reader
        spec = reader.spec
        assert spec is not None
        t0 = time.monotonic()
        reader.cursor, reader.pending = self._cursor, list(self._pending)
        if self._cursor and (why := reader.replaced()) is not None:
            log.warning(
                "replay DB %s: %s: it was recreated since the checkpoint; reading it from the start "
                "(rows_seen keeps counting)",
                reader.db_path,
                why,
            )
            self._cursor = reader.cursor = 0
            self._pending, reader.pending = [], []
        if self._window is not None:
            self._check_same_game(spec)
            self._ready = True
            return
        self._window = ReplayWindow(
            spec.obs_size, spec.num_actions, self._max_window, average_positions=self.cfg.average_positions
        )
        self._augmenter = Augmenter.for_spec(spec) if self.cfg.augment else None
        self._legal = spec.legal_slice
        self._replay_rows = self._count_rows() if self._cursor else 0
        if self._cursor:
            w = self._current_window()
            self._window.set_window(w)
            rows = reader.read_newest(w, self._cursor)
            self._window.add(rows.obs, rows.policy, rows.value_target(self.cfg.value_target_mix))
            log.info(
                "replay: resumed at rowid %d with %d rows seen; window refilled with %d rows in %.2fs",
                self._cursor,
                self._rows_seen,
                len(rows),
                time.monotonic() - t0,
            )
        self._ready = True

    def _check_same_game(self, spec: GameSpec) -> None:
        """A re-opened DB must describe the game the window holds rows of."""
        assert self._window is not None and self._legal is not None
        held = (self._window.obs_size, self._window.num_actions, self._legal.start)
        if (spec.obs_size, spec.num_actions, spec.legal_mask_offset) != held:
            raise SchemaError(
                f"{self._reader.db_path}: game_metadata for {self.cfg.env_id!r} now says obs_size {spec.obs_size}, "
                f"num_actions {spec.num_actions}, legal_mask_offset {spec.legal_mask_offset}; this run trains on "
                f"{held[0]}, {held[1]}, {held[2]}"
            )

    def _count_rows(self) -> int:
        try:
            return self._reader.count_rows(self._cursor)
        except sqlite3.DatabaseError as exc:
            reason = read_failure(exc, self._reader.db_path)
            if reason is None or reason.kind != WaitKind.DB_UNREADABLE:
                raise
            # Only a figure for the dashboard: a damaged page must not stop the resume.
            log.warning(
                "replay: cannot count the rows of %s (%s); showing the rows seen instead",
                self._reader.db_path,
                exc,
            )
            return self._rows_seen

    def _current_window(self) -> int:
        c = self.cfg
        return window_size(
            self._rows_seen, c.window, c.window_min_rows, c.window_alpha, c.window_beta, c.window_cap
        )

    def _ingest(self) -> bool:
        reader, window = self._reader, self._window
        assert window is not None
        t0 = time.monotonic()
        loaded = 0
        live = self._caught_up  # the backlog at start-up is not a rate of new rows
        while True:
            chunk: DecodedRows = reader.read_new()
            # Rows skipped past a damaged part of the file: more may follow.
            damaged = chunk.bad.get(BAD_UNREADABLE, 0) > 0
            if chunk.scanned == 0 and not damaged:
                self._cursor, self._pending = reader.cursor, list(reader.pending)
                more = False
                break
            self._rows_seen += len(chunk)
            self._bad.update(chunk.bad)
            self._policy_onehot += chunk.policy_onehot
            self._replay_rows = (self._replay_rows or 0) + chunk.scanned
            window.set_window(self._current_window())
            window.add(chunk.obs, chunk.policy, chunk.value_target(self.cfg.value_target_mix))
            self._cursor, self._pending = reader.cursor, list(reader.pending)
            loaded += chunk.scanned
            if chunk.scanned < reader.chunk_rows and not damaged:
                more = False
                break
            if time.monotonic() - t0 > INGEST_SLICE_S:
                more = True
                self._set_status(
                    WaitReason(WaitKind.LOADING, f"loading replay rows ({self._rows_seen} usable so far)"),
                    busy=True,
                )
                break
        if not more:
            self._caught_up = True
        if loaded and live:
            now = time.monotonic()
            self._ingest_events.append((now, loaded))
            while self._ingest_events and now - self._ingest_events[0][0] > RATE_HORIZON_S:
                self._ingest_events.popleft()
        return more

    def _new_rows_per_sec(self) -> float:
        events = list(self._ingest_events)
        if not events:
            return 0.0
        span = max(time.monotonic() - events[0][0], self.cfg.poll_interval, 1.0)
        return float(sum(n for _, n in events) / span)

    def _produce(self) -> bool:
        """Prepare a burst of batches if the queue has room and data use allows; True if it did."""
        if not self._caught_up or len(self._queue) > self.prefetch - self.burst:
            return False
        cfg, window = self.cfg, self._window
        assert window is not None
        b = cfg.batch_size
        if self._rows_seen >= cfg.min_rows and window.sample_size == 0:
            self._set_status(
                WaitReason(
                    WaitKind.NO_USABLE_ROWS,
                    f"no usable rows of env_id {cfg.env_id!r} in {self._reader.db_path} since the resume",
                ),
                busy=False,
            )
            return False
        if self._rows_seen < cfg.min_rows:
            self._set_status(
                WaitReason(
                    WaitKind.TOO_FEW_ROWS,
                    f"{self._rows_seen} usable rows of env_id {cfg.env_id!r} in {self._reader.db_path}, need {cfg.min_rows} (--min-rows)",
                ),
                busy=False,
            )
            return False
        allowed = self.burst
        if cfg.max_reuse > 0:
            budget = cfg.max_reuse * self._rows_seen - self._samples - b * len(self._queue)
            allowed = min(allowed, int(budget // b))
            if allowed <= 0:
                if not self._queue:
                    # Waiting for new rows: if they cannot be read, that is the reason to show.
                    self._set_status(
                        self._db_problem
                        or WaitReason(
                            WaitKind.REUSE_LIMIT,
                            f"reuse limit: {self._samples} samples trained on {self._rows_seen} rows seen "
                            f"(--max-reuse {cfg.max_reuse:g}); waiting for actors to write new rows",
                        ),
                        busy=False,
                    )
                return False
        n, skip = allowed, 0
        if self._replay_burst:
            n, skip = self._replay_burst, self._replay_skip
            self._replay_burst = self._replay_skip = 0
        rng_before = self._rng.bit_generator.state
        batches = self._make_batches(n)
        states = [self._worker_state(rng_before, n, j + 1) for j in range(n)]
        keep = slice(skip, min(n, skip + allowed))
        with self._cond:
            self._queue.extend(zip(batches[keep], states[keep]))
            self._status, self._busy = None, True
            self._cond.notify_all()
        return True

    def _make_batches(self, n: int) -> list[Batch]:
        """`n` batches from one vectorised draw: uniform rows (or distinct positions) of the
        window, each under a random symmetry."""
        window, b = self._window, self.cfg.batch_size
        assert window is not None
        rows = window.sample_indices(self._rng, n * b)
        obs_store, policy_store, value_store = window.sample_arrays()
        if self._augmenter is not None:
            obs, policy = self._augmenter.gather(obs_store, policy_store, rows, self._rng)
        else:
            obs, policy = obs_store[rows], policy_store[rows]
        tensors = [torch.from_numpy(x) for x in (obs, obs[:, self._legal] > 0.5, policy, value_store[rows])]
        batches = []
        for i in range(n):
            part = [t[i * b : (i + 1) * b] for t in tensors]
            batch = Batch(obs=part[0], legal_mask=part[1], policy=part[2], value=part[3])
            batches.append(batch.to(self.device) if self.device.type != "cpu" else batch)
        return batches
