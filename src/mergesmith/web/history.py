"""Every run started from the page, in a SQLite file: its recipe, inputs, output, digests,
duration, outcome and evaluations; searchable."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS merges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    recipe TEXT NOT NULL,
    recipe_sha256 TEXT NOT NULL,
    method TEXT,
    inputs TEXT NOT NULL,        -- JSON: reference -> {folder, files: [[name, bytes, mtime_ns]]}
    output TEXT NOT NULL,
    outcome TEXT NOT NULL,       -- running, done, failed, cancelled, interrupted
    message TEXT,                -- the error, when it failed
    result TEXT,                 -- JSON: tensors, bytes, files with SHA-256, verify report
    duration_s REAL
);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    merge_id INTEGER NOT NULL REFERENCES merges(id),
    started REAL NOT NULL,
    base TEXT,
    outcome TEXT NOT NULL,
    message TEXT,
    result TEXT                  -- JSON: mergesmith.evaluate.Evaluation
);
"""

_JSON_COLUMNS = ("inputs", "result")


class History:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        with self.lock, self.db:
            self.db.executescript(_SCHEMA)
            # a server that stopped mid-run left rows that will never finish
            self.db.execute("UPDATE merges SET outcome = 'interrupted' WHERE outcome = 'running'")
            self.db.execute("UPDATE evaluations SET outcome = 'interrupted' WHERE outcome = 'running'")

    def start_merge(self, recipe: str, method: str, inputs: dict[str, Any], output: str) -> int:
        digest = hashlib.sha256(recipe.encode()).hexdigest()
        with self.lock, self.db:
            cursor = self.db.execute(
                "INSERT INTO merges (started, recipe, recipe_sha256, method, inputs, output, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running')",
                (time.time(), recipe, digest, method, json.dumps(inputs), output),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_merge(self, merge_id: int, outcome: str, *, message: str | None = None, result: Any = None) -> None:
        now = time.time()
        with self.lock, self.db:
            self.db.execute(
                "UPDATE merges SET finished = ?, outcome = ?, message = ?, result = ?, duration_s = ? - started "
                "WHERE id = ?",
                (now, outcome, message, json.dumps(result), now, merge_id),
            )

    def start_evaluation(self, merge_id: int, base: str | None) -> int:
        with self.lock, self.db:
            cursor = self.db.execute(
                "INSERT INTO evaluations (merge_id, started, base, outcome) VALUES (?, ?, ?, 'running')",
                (merge_id, time.time(), base),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish_evaluation(self, evaluation_id: int, outcome: str, *, message: str | None = None, result: Any = None):
        with self.lock, self.db:
            self.db.execute(
                "UPDATE evaluations SET outcome = ?, message = ?, result = ? WHERE id = ?",
                (outcome, message, json.dumps(result), evaluation_id),
            )

    def merges(self, query: str = "", outcome: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Newest first; `query` matches the recipe, the output folder, the method or the outcome."""
        pattern = f"%{query}%"
        with self.lock:
            rows = self.db.execute(
                "SELECT id, started, finished, method, output, outcome, message, duration_s, recipe_sha256 "
                "FROM merges WHERE (recipe LIKE ? OR output LIKE ? OR method LIKE ? OR outcome LIKE ?) "
                "AND (? IS NULL OR outcome = ?) ORDER BY id DESC LIMIT ?",
                (pattern, pattern, pattern, pattern, outcome, outcome, limit),
            ).fetchall()
        return [dict(row) for row in rows]

    def merge(self, merge_id: int) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM merges WHERE id = ?", (merge_id,)).fetchone()
            evaluations = self.db.execute(
                "SELECT * FROM evaluations WHERE merge_id = ? ORDER BY id", (merge_id,)
            ).fetchall()
        if row is None:
            return None
        return {**_decoded(row), "evaluations": [_decoded(e) for e in evaluations]}


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for column in _JSON_COLUMNS:
        if record.get(column) is not None:
            record[column] = json.loads(record[column])
    return record
