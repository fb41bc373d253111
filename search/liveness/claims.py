"""One winner among many workers, kept in the study's own storage.

When the workers of a shared study reach its end together, exactly one of them must
promote the champion. `claim(key)` is a compare-and-set: the first caller wins and later
callers learn who did. On an RDB storage (PostgreSQL, MySQL, SQLite) it is an INSERT into a
table of our own beside Optuna's, whose primary key makes the second INSERT fail; on the
journal file it is a file under an exclusive lock beside the journal. A claim whose holder
is known to be dead (see search.liveness.workers), or older than the caller's `stale_after`, and
never finished is taken over with a conditional UPDATE (or under the same lock), so a killed
promoter does not block the study. The same serves any once-only step of a shared study
(queueing a dead worker's trial again: search.engine.optuna_oracle).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from search.liveness import workers
from search.runs import atomic
from search.runs.locks import FolderLock

TABLE = "transfer_search_claims"


def _takeable(holder: dict[str, Any], stale_after: float | None) -> bool:
    """Unfinished, and its holder dead or (where the caller says how long the work takes at most) too old."""
    if holder.get("done"):
        return False
    if workers.alive(workers.Worker.from_record(holder.get("worker"))) is False:
        return True
    return stale_after is not None and time.time() - float(holder.get("claimed_at") or 0) > stale_after


def _me() -> dict[str, Any]:
    return {"worker": workers.this_worker().record(), "claimed_at": time.time(), "done": False}


class Claims:
    """Claims of one storage: an RDB URL, or the folder beside a journal file."""

    def __init__(self, storage: str):
        self.storage = storage
        self._engine: Any = None

    # RDB ---------------------------------------------------------------------------------
    def _table(self) -> Any:
        import sqlalchemy as sa

        if self._engine is None:
            self._engine = sa.create_engine(self.storage, poolclass=sa.pool.NullPool)
            metadata = sa.MetaData()
            self._claims = sa.Table(TABLE, metadata, sa.Column("key", sa.String(255), primary_key=True),
                                    sa.Column("holder", sa.Text, nullable=False))
            for attempt in range(5):  # workers starting at once race to create the table
                try:
                    metadata.create_all(self._engine, checkfirst=True)
                    break
                except sa.exc.DBAPIError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
        return self._claims

    def _claim_rdb(self, key: str, stale_after: float | None) -> tuple[bool, dict[str, Any]]:
        import sqlalchemy as sa

        table, mine = self._table(), _me()
        with self._engine.begin() as db:
            try:
                db.execute(table.insert().values(key=key, holder=json.dumps(mine)))
                return True, mine
            except sa.exc.IntegrityError:
                pass
        with self._engine.begin() as db:
            text = db.execute(sa.select(table.c.holder).where(table.c.key == key)).scalar_one()
            holder = json.loads(text)
            if _takeable(holder, stale_after):
                taken = db.execute(table.update().where(table.c.key == key, table.c.holder == text)
                                   .values(holder=json.dumps(mine)))
                if taken.rowcount == 1:
                    return True, mine
                holder = json.loads(db.execute(sa.select(table.c.holder).where(table.c.key == key)).scalar_one())
        return False, holder

    def _finish_rdb(self, key: str) -> None:
        import sqlalchemy as sa

        table = self._table()
        with self._engine.begin() as db:
            holder = json.loads(db.execute(sa.select(table.c.holder).where(table.c.key == key)).scalar_one())
            db.execute(table.update().where(table.c.key == key).values(holder=json.dumps({**holder, "done": True})))

    def _forget_rdb(self, prefix: str) -> None:
        table = self._table()
        with self._engine.begin() as db:
            db.execute(table.delete().where(table.c.key.startswith(prefix)))

    # Journal ----------------------------------------------------------------------------
    @property
    def _folder(self) -> Path:
        return Path(f"{self.storage}.claims")

    def _file(self, key: str) -> Path:
        return self._folder / f"{key.replace('/', '_').replace(':', '_')}.json"

    def _claim_file(self, key: str, stale_after: float | None) -> tuple[bool, dict[str, Any]]:
        with FolderLock(self._folder / ".lock", doing="claiming", wait=60):
            path = self._file(key)
            try:
                holder = json.loads(path.read_text())
            except (OSError, ValueError):
                holder = None
            if holder is None or _takeable(holder, stale_after):
                mine = _me()
                atomic.write_json(path, mine)
                return True, mine
            return False, holder

    def _finish_file(self, key: str) -> None:
        with FolderLock(self._folder / ".lock", doing="claiming", wait=60):
            path = self._file(key)
            atomic.write_json(path, {**json.loads(path.read_text()), "done": True})

    # Public -----------------------------------------------------------------------------
    @property
    def _rdb(self) -> bool:
        return "://" in self.storage

    def claim(self, key: str, *, stale_after: float | None = None) -> tuple[bool, dict[str, Any]]:
        """(True, my record) when this process now holds `key`, else (False, the holder's).
        `stale_after`: seconds after which an unfinished claim is taken over even from a holder
        whose life cannot be checked (another machine)."""
        return self._claim_rdb(key, stale_after) if self._rdb else self._claim_file(key, stale_after)

    def finish(self, key: str) -> None:
        """Mark the claim's work done: nobody takes it over after this."""
        self._finish_rdb(key) if self._rdb else self._finish_file(key)

    def forget(self, prefix: str) -> None:
        """Drop every claim whose key starts with `prefix` (a study deleted by --fresh)."""
        if self._rdb:
            self._forget_rdb(prefix)
        elif self._folder.is_dir():
            for path in self._folder.glob(f"{prefix.replace('/', '_').replace(':', '_')}*.json"):
                path.unlink(missing_ok=True)
