"""The run's durable record: SQLite in the output folder, one row per item.

Every state change is its own committed transaction (WAL journal), so a SIGKILL of the driver
at any moment leaves a consistent file. States:

    pending -> running -> saving -> done      (outputs are named in `saving` before any is written)
                       -> skipped             (the prompt ran and saved nothing: e.g. Filter By Found)
                       -> failed / bad        (retries used up / the image itself is unusable)

On open, `running` goes back to `pending` (its prompt may or may not have run; nothing of it
was saved), and `saving` becomes `done` when every named output exists, else `pending`.

Output names are unique by construction. Each item gets a stem when it is registered: its path
relative to the folder that holds every source registered so far (the manifest's `root`),
without the suffix (`sku1/front`), so sources in different folders never share one; a later run
from a sibling folder moves the root up, and its items' stems start with that folder's name. An
item writes `stem.ext`, or `stem_1.ext`, `stem_2.ext`, ... when its prompt saves several files.
A stem is taken only when none of its names can be another item's, ignoring case: `cat_1` is
refused while `cat` is taken (and the other way round), and a source whose stem is refused gets
`<stem>_<suffix>`, then `<stem>_<suffix> (2)`, `(3)`, ... The `outputs` table maps each written
name to its item, so `owner_of` is one index look-up however many items are done.

One run at a time: `catalog.lock` in the output folder is held by an exclusive SQLite
transaction while the manifest is open. That is the operating system's lock on the file, which
ends with the process however it ends (exit, crash, SIGKILL, power loss), so a lock file left
behind by a dead run never blocks the next one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

FILE_NAME = "catalog.sqlite"
LOCK_NAME = "catalog.lock"
FINAL = ("done", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,        -- the source file (absolute path)
    stem TEXT NOT NULL UNIQUE,   -- output names start with it (relative folder kept)
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    server TEXT,
    seconds REAL,
    updated REAL,
    family TEXT                  -- the stem without a trailing _<digits>: the stem it would number
);
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY COLLATE NOCASE, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS outputs_by_key ON outputs (key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS items_by_stem ON items (stem COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS items_by_family ON items (family COLLATE NOCASE);
"""
_NUMBERED = re.compile(r"(.*)_\d+", re.DOTALL)


class ManifestMismatch(RuntimeError):
    """The output folder holds a run of another workflow."""


class OutputInUse(RuntimeError):
    """Another catalog run is writing into the output folder."""


class Manifest:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = _hold_lock(self.folder)
        try:
            self.db = sqlite3.connect(self.folder / FILE_NAME, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable against process death, not power loss
            self.db.executescript(_SCHEMA)
            self._upgrade()
            self.db.executescript(_INDEXES)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('holder', ?)", (
                f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}",))
            self._recover()
        except BaseException:
            self.lock.close()
            raise

    def close(self) -> None:
        self.db.close()
        self.lock.close()

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
        """Register sources not seen before, each with a stem whose output names no other item can have."""
        known = {key for (key,) in self.db.execute("SELECT key FROM items")}
        new = [Path(source) for source in dict.fromkeys(sources) if str(source) not in known]
        if not new:
            return
        row = self.db.execute("SELECT value FROM meta WHERE name='root'").fetchone()
        root = os.path.commonpath([str(source.parent) for source in new] + ([row[0]] if row else []))
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('root', ?)", (root,))
            for source in new:
                stem = next(s for s in _stems(PurePosixPath(*source.relative_to(root).parts)) if self._stem_is_free(s))
                self.db.execute("INSERT INTO items (key, stem, family, status, updated) VALUES (?, ?, ?, 'pending', ?)",
                                (str(source), stem, _family(stem), time.time()))

    def _stem_is_free(self, stem: str) -> bool:
        """No item has this stem, nor the stem this one numbers (`cat` for `cat_1`), nor one that
        numbers this one (`cat_1` for `cat`), ignoring case."""
        return self.db.execute(
            "SELECT 1 FROM items WHERE stem = ?1 COLLATE NOCASE OR stem = ?2 COLLATE NOCASE "
            "OR family = ?1 COLLATE NOCASE LIMIT 1", (stem, _family(stem))).fetchone() is None

    def _upgrade(self) -> None:
        """A manifest written before output names were indexed: fill `family` and `outputs` from it."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(items)")}
        if "family" in columns:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("ALTER TABLE items ADD COLUMN family TEXT")
            for key, stem, outputs in self.db.execute("SELECT key, stem, outputs FROM items").fetchall():
                self.db.execute("UPDATE items SET family=? WHERE key=?", (_family(stem), key))
                self.db.executemany("INSERT OR IGNORE INTO outputs VALUES (?, ?)",
                                    [(name, key) for name in json.loads(outputs)])

    def _recover(self) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("UPDATE items SET status='pending' WHERE status='running'")
            for (key,) in self.db.execute("SELECT key FROM items WHERE status='saving'").fetchall():
                whole = all((self.folder / name).is_file() for name in self.outputs_of(key))
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
        row = self.db.execute("SELECT key FROM outputs WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def outputs_of(self, key: str) -> list[str]:
        return [name for (name,) in self.db.execute("SELECT name FROM outputs WHERE key = ? ORDER BY rowid", (key,))]

    # -- transitions ----------------------------------------------------------------------
    def _set(self, key: str, **values) -> None:
        values["updated"] = time.time()
        columns = ", ".join(f"{name}=?" for name in values)
        self.db.execute(f"UPDATE items SET {columns} WHERE key=?", (*values.values(), key))

    def running(self, key: str, server: str) -> None:
        self._set(key, status="running", server=server)

    def saving(self, key: str, names: list[str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM outputs WHERE key=?", (key,))
            self.db.executemany("INSERT INTO outputs VALUES (?, ?)", [(name, key) for name in names])
            self._set(key, status="saving")

    def finished(self, key: str, status: str, server: str, seconds: float) -> None:
        self._set(key, status=status, server=server, seconds=seconds, error=None)

    def attempt_failed(self, key: str, error: str, final: bool) -> None:
        self.db.execute("UPDATE items SET attempts=attempts+1, error=?, status=?, updated=? WHERE key=?",
                        (error, "failed" if final else "pending", time.time(), key))

    def requeue(self, key: str) -> None:
        self._set(key, status="pending")

    def bad(self, key: str, reason: str) -> None:
        self._set(key, status="bad", error=reason)


def _hold_lock(folder: Path) -> sqlite3.Connection:
    """An open exclusive transaction on the folder's lock file; OutputInUse when another run has it."""
    lock = sqlite3.connect(folder / LOCK_NAME, isolation_level=None, timeout=0)
    try:
        lock.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError:
        lock.close()
        raise OutputInUse(f"{folder} is in use by another catalog run ({_holder(folder)}): wait until it "
                          "ends, or give another --out. (The lock ends with that run's process, however it "
                          "ends; a leftover catalog.lock file of a dead run does not block.)") from None
    return lock


def _holder(folder: Path) -> str:
    try:
        db = sqlite3.connect(f"{(folder / FILE_NAME).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM meta WHERE name='holder'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        row = None
    return row[0] if row else "holder not known yet"


def check_free(folder: Path) -> None:
    """OutputInUse now, rather than after minutes of starting servers, when another run holds ``folder``."""
    if (Path(folder) / LOCK_NAME).is_file():
        _hold_lock(Path(folder)).close()


def _family(stem: str) -> str:
    numbered = _NUMBERED.fullmatch(stem)
    return numbered.group(1) if numbered else stem


def _stems(relative: PurePosixPath) -> Iterator[str]:
    """Stems for a source, in order of preference: `a/front`, `a/front_jpg`, `a/front_jpg (2)`, ..."""
    stem = str(relative.with_suffix(""))
    yield stem
    tagged = f"{stem}_{relative.suffix.lstrip('.').lower()}" if relative.suffix else f"{stem}_"
    yield tagged
    yield from (f"{tagged} ({n})" for n in itertools.count(2))
