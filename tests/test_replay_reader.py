"""The replay reader on real SQLite files: probing, schema errors, decoding, corrupt rows
(docs/contract.md section 1, "Reader rules")."""

import sqlite3
import time
from collections import Counter

import numpy as np
import pytest
from replay_data import journal_mode, write_random_games

from trainer.games import get_game
from trainer.replay.codec import encode_action, encode_f32
from trainer.replay.reader import ReplayReader
from trainer.replay.schema import SchemaError, create_schema, upsert_game_metadata
from trainer.sources.wait_reason import WaitKind


def _read_all(reader: ReplayReader):
    parts = []
    while (chunk := reader.read_new()).scanned:
        parts.append(chunk)
    return parts


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_reads_every_row_in_chunks_from_wal_and_rollback_dbs(tmp_path, journal):
    db = tmp_path / "replay.db"
    rows = write_random_games(
        db, "connect4", 30, seed=1, journal=journal, with_model_step=True, model_step=12
    )
    assert not (tmp_path / "replay.db-wal").exists()  # writer closed: a reader must cope without it
    assert journal_mode(db) == journal
    write_random_games(db, "tictactoe", 5, seed=2, journal=journal)  # another game's rows are ignored
    reader = ReplayReader(db, "connect4", chunk_rows=100)
    assert reader.probe(min_rows=rows) is None
    parts = _read_all(reader)
    assert sum(len(p) for p in parts) == rows and len(parts) == -(-rows // 100)
    assert reader.cursor == reader.max_rowid()  # the other game's tail rows are scanned past
    assert reader.model_step == 12 and abs(reader.newest_timestamp - time.time()) < 60
    spec = get_game("connect4").spec
    obs = np.concatenate([p.obs for p in parts])
    policy = np.concatenate([p.policy for p in parts])
    value = np.concatenate([p.value for p in parts])
    assert obs.shape == (rows, spec.obs_size) and policy.shape == (rows, spec.num_actions)
    legal = obs[:, 84:91] > 0.5
    assert np.allclose(policy.sum(1), 1) and np.all(policy[~legal] == 0)
    assert set(np.unique(value)) <= {-1.0, 0.0, 1.0}
    assert np.all(np.diff(np.concatenate([p.rowids for p in parts])) > 0)
    # No new rows: nothing returned, cursor unchanged.
    assert reader.read_new().scanned == 0
    # read_newest gives the newest usable rows up to a rowid, oldest first.
    newest = reader.read_newest(50, reader.cursor)
    np.testing.assert_array_equal(newest.obs, obs[-50:])
    reader.close()


def test_probe_reasons(tmp_path):
    db = tmp_path / "replay.db"
    assert ReplayReader(db, "tictactoe").probe().kind == WaitKind.NO_DB
    sqlite3.connect(db).close()  # empty file, as an actor creates it
    reader = ReplayReader(db, "tictactoe")
    assert reader.probe().kind == WaitKind.NO_TABLE
    rows = write_random_games(db, "tictactoe", 2, seed=0)
    reason = reader.probe(min_rows=100)
    assert reason.kind == WaitKind.TOO_FEW_ROWS and f"{rows} rows of env_id 'tictactoe'" in str(reason)
    assert reader.probe(min_rows=rows) is None
    reader.close()


def test_unknown_game_without_metadata_waits(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 1, seed=0)
    assert ReplayReader(db, "othello").probe().kind == WaitKind.NO_METADATA


def test_missing_column_is_a_schema_error_naming_column_and_file(tmp_path):
    db = tmp_path / "replay.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE transitions (id TEXT PRIMARY KEY, env_id TEXT, observation BLOB, action BLOB, "
        "mcts_value REAL, game_outcome REAL, timestamp INTEGER)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError, match=r"policy_probs") as exc:
        ReplayReader(db, "tictactoe").probe()
    assert str(db) in str(exc.value)


def test_not_a_database_is_a_schema_error(tmp_path):
    db = tmp_path / "replay.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError, match="cannot be read"):
        ReplayReader(db, "tictactoe").probe()


def test_corrupt_rows_are_skipped_and_counted_and_fallbacks_apply(tmp_path):
    db = tmp_path / "replay.db"
    game = get_game("tictactoe")
    good = write_random_games(db, "tictactoe", 3, seed=4)
    s0 = game.initial_state()
    obs = game.encode(s0)  # every move legal
    uniform = np.full(9, 1 / 9, np.float32)
    nan_obs = obs.copy()
    nan_obs[3] = np.nan
    s1 = game.apply(s0, 4)  # centre taken: action 4 is illegal here
    skewed = np.zeros(9, np.float32)
    skewed[[0, 4]] = [0.25, 0.75]  # mass on the illegal centre must go
    cases = [
        # (observation, action, policy_probs, mcts_value, game_outcome)   -> expectation
        (encode_f32(obs[:-1]), encode_action(0), encode_f32(uniform), 0.0, 1.0),  # obs_length
        ("text", encode_action(0), encode_f32(uniform), 0.0, 1.0),  # obs_length (TEXT, not a blob)
        (encode_f32(obs), b"\x01\x00", encode_f32(uniform), 0.0, 1.0),  # bad_action (length)
        (encode_f32(obs), encode_action(9), encode_f32(uniform), 0.0, 1.0),  # bad_action (range)
        (encode_f32(nan_obs), encode_action(0), encode_f32(uniform), 0.0, 1.0),  # nonfinite
        (encode_f32(obs), encode_action(0), encode_f32([np.inf] * 9), 0.0, 1.0),  # nonfinite policy
        # SQLite stores a NaN REAL as NULL, but keeps infinities
        (encode_f32(obs), encode_action(0), encode_f32(uniform), 0.0, float("inf")),  # nonfinite value
        (encode_f32(obs), encode_action(0), encode_f32(uniform), None, None),  # value_null
        (encode_f32(game.encode(s1)), encode_action(4), encode_f32(uniform), 0.0, 1.0),  # illegal_action
        # usable rows:
        (encode_f32(obs), encode_action(2), None, 0.0, 1.0),  # NULL policy -> one-hot of action 2
        (encode_f32(obs), encode_action(5), encode_f32(uniform[:4]), 0.0, -1.0),  # short policy -> one-hot
        (encode_f32(obs), encode_action(1), encode_f32(uniform), 0.3, None),  # NULL outcome -> mcts_value
        (encode_f32(game.encode(s1)), encode_action(0), encode_f32(skewed), 0.0, 0.0),  # renormalised
    ]
    conn = sqlite3.connect(db)
    for k, (o, a, p, mv, go) in enumerate(cases):
        conn.execute(
            "INSERT INTO transitions (id, env_id, episode_id, step_number, state, action, next_state, "
            "observation, next_observation, reward, done, timestamp, policy_probs, mcts_value, game_outcome) "
            "VALUES (?, 'tictactoe', 'bad', ?, x'00', ?, x'00', ?, x'00', 0.0, 0, 1, ?, ?, ?)",
            (f"bad-{k}", k, a, o, p, mv, go),
        )
    conn.commit()
    conn.close()
    reader = ReplayReader(db, "tictactoe")
    parts = _read_all(reader)
    bad = sum((p.bad for p in parts), start=Counter())
    assert dict(bad) == {
        "obs_length": 2,
        "bad_action": 2,
        "nonfinite": 3,
        "value_null": 1,
        "illegal_action": 1,
    }
    total = sum(len(p) for p in parts)
    assert total == good + 4 and sum(p.policy_onehot for p in parts) == 2
    last = parts[-1]
    np.testing.assert_array_equal(last.policy[-4], np.eye(9, dtype=np.float32)[2])
    np.testing.assert_array_equal(last.policy[-3], np.eye(9, dtype=np.float32)[5])
    assert last.value[-3] == -1.0 and last.value[-2] == pytest.approx(0.3)
    np.testing.assert_allclose(last.policy[-1], np.eye(9, dtype=np.float32)[0])


def test_model_step_column_added_later_is_picked_up(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 2, seed=0)
    reader = ReplayReader(db, "tictactoe")
    _read_all(reader)
    assert reader.model_step is None
    write_random_games(db, "tictactoe", 2, seed=1, with_model_step=True, model_step=400)  # ALTER TABLE
    assert sum(len(p) for p in _read_all(reader)) > 0
    assert reader.model_step == 400


def test_metadata_shapes_are_used(tmp_path):
    """Shapes come from game_metadata, not from the trainer's own table."""
    db = tmp_path / "replay.db"
    conn = sqlite3.connect(db)
    create_schema(conn)
    spec = get_game("tictactoe").spec
    upsert_game_metadata(conn, spec)
    conn.execute("UPDATE game_metadata SET obs_size = 30")  # one extra feature
    conn.commit()
    conn.close()
    reader = ReplayReader(db, "tictactoe")
    assert reader.probe() is None
    assert reader.spec.obs_size == 30
