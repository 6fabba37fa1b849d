"""The replay in PostgreSQL: many actors on many machines write one server, one trainer reads.

    connection.py  connect by URL; one clear line per failure (wait, or an error)
    schema.py      the Rust actor's tables + our `seq` and `model_step` columns; migrate
    reader.py      PgReplayReader: the SQLite ReplayReader's interface, tailing by `seq`
    writer.py      PgReplayWriter: one idempotent multi-row upsert per game, reconnects

psycopg (3) is needed only here, so a SQLite-only install never imports it.
"""
