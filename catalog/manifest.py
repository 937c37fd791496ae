"""The run's durable record: SQLite in the output folder, one row per item.

Every state change is its own committed transaction (WAL journal), so a SIGKILL of the driver
at any moment leaves a consistent file. States:

    pending -> running -> saving -> done      (outputs are named in `saving` before any is written)
                       -> skipped             (the prompt ran and saved nothing: e.g. Filter By Found)
                       -> failed / bad        (retries used up / the image itself is unusable)

On open, `running` goes back to `pending` (its prompt may or may not have run; nothing of it
was saved), and `saving` becomes `done` when every named output exists, else `pending`.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

FILE_NAME = "catalog.sqlite"
FINAL = ("done", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,        -- the source file (absolute path)
    stem TEXT NOT NULL UNIQUE,   -- output names start with it
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    server TEXT,
    seconds REAL,
    updated REAL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""


class ManifestMismatch(RuntimeError):
    """The output folder holds a run of another workflow."""


class Manifest:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / FILE_NAME, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against process death, not power loss
        self.db.executescript(_SCHEMA)
        self._recover()

    def close(self) -> None:
        self.db.close()

    # -- set-up ---------------------------------------------------------------------------
    def bind_workflow(self, workflow: dict, allow_change: bool = False) -> None:
        digest = hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()
        row = self.db.execute("SELECT value FROM meta WHERE name='workflow'").fetchone()
        if row and row[0] != digest and not allow_change:
            raise ManifestMismatch(
                f"{self.folder} holds a run of a different workflow: use another output folder, or pass "
                "--new-workflow to go on with this one (items already done are not redone)")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('workflow', ?)", (digest,))

    def add(self, sources: list[Path]) -> None:
        """Register sources not seen before, each with an output stem no other item has."""
        known = {key for (key,) in self.db.execute("SELECT key FROM items")}
        taken = {stem.lower() for (stem,) in self.db.execute("SELECT stem FROM items")}
        with self.db:
            self.db.execute("BEGIN")
            for source in sources:
                key = str(source)
                if key in known:
                    continue
                stem = _free_stem(source, taken)
                taken.add(stem.lower())
                self.db.execute("INSERT INTO items (key, stem, status, updated) VALUES (?, ?, 'pending', ?)",
                                (key, stem, time.time()))

    def _recover(self) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE items SET status='pending' WHERE status='running'")
            for key, outputs in self.db.execute("SELECT key, outputs FROM items WHERE status='saving'").fetchall():
                whole = all((self.folder / name).is_file() for name in json.loads(outputs))
                self.db.execute("UPDATE items SET status=? WHERE key=?", ("done" if whole else "pending", key))

    # -- queries --------------------------------------------------------------------------
    def todo(self, keys: list[str]) -> list[tuple[str, str]]:
        """(key, stem) of the given items that are not finished, in the given order."""
        rows = dict(self.db.execute("SELECT key, stem FROM items WHERE status NOT IN (?, ?)", FINAL).fetchall())
        return [(key, rows[key]) for key in keys if key in rows]

    def rows(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM items ORDER BY key")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def owner_of(self, name: str) -> str | None:
        for key, outputs in self.db.execute("SELECT key, outputs FROM items WHERE outputs != '[]'"):
            if name in json.loads(outputs):
                return key
        return None

    # -- transitions ----------------------------------------------------------------------
    def _set(self, key: str, **values) -> None:
        values["updated"] = time.time()
        columns = ", ".join(f"{name}=?" for name in values)
        self.db.execute(f"UPDATE items SET {columns} WHERE key=?", (*values.values(), key))

    def running(self, key: str, server: str) -> None:
        self._set(key, status="running", server=server)

    def saving(self, key: str, names: list[str]) -> None:
        self._set(key, status="saving", outputs=json.dumps(names))

    def finished(self, key: str, status: str, server: str, seconds: float) -> None:
        self._set(key, status=status, server=server, seconds=seconds, error=None)

    def attempt_failed(self, key: str, error: str, final: bool) -> None:
        self.db.execute("UPDATE items SET attempts=attempts+1, error=?, status=?, updated=? WHERE key=?",
                        (error, "failed" if final else "pending", time.time(), key))

    def requeue(self, key: str) -> None:
        self._set(key, status="pending")

    def bad(self, key: str, reason: str) -> None:
        self._set(key, status="bad", error=reason)


def _free_stem(source: Path, taken: set[str]) -> str:
    candidates = [source.stem, f"{source.stem}_{source.suffix.lstrip('.')}"]
    candidates += [f"{source.stem}_{source.suffix.lstrip('.')}_{n}" for n in range(2, 10_000)]
    return next(c for c in candidates if c.lower() not in taken)
