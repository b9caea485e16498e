"""A study's responses: one SQLite file (``responses.db`` in the study folder), through SQLAlchemy.

One row per judgement — rater, trial, answer, the images in the order shown, response time, when, and where it came
from (the web app, or an imported MTurk batch) — and one per rater (arrival number, the seed of their plan's order,
platform ids, when they finished). ``UNIQUE(rater, trial)`` makes a second answer to the same trial fail in the
database itself, so two tabs, a double click or a re-imported CSV cannot count a judgement twice.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and every answer is its own committed
transaction before the next page is served, so a server killed at any moment loses at most the answer whose request
had not been acknowledged — which the rater's browser then shows as not sent, and the rater answers again.

The database records the manifest's digest at creation; opened against another manifest it refuses (answers about
one study's trial ids are meaningless for another's).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness.study.manifest import Manifest, StudyError, rater_seed

__all__ = ["DB_FILE", "DoubleAnswer", "Judgement", "Rater", "Responses"]

DB_FILE = "responses.db"

_metadata = sa.MetaData()
_meta = sa.Table("meta", _metadata, sa.Column("key", sa.String, primary_key=True), sa.Column("value", sa.String))
_raters = sa.Table(
    "raters", _metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("number", sa.Integer, nullable=False, unique=True),
    sa.Column("platform", sa.String, nullable=False),
    sa.Column("plan_seed", sa.String, nullable=False),  # seeds the rater's order and 2afc sides (rater_seed)
    sa.Column("external", sa.Text, nullable=False, default="{}"),
    sa.Column("started_at", sa.String, nullable=False),
    sa.Column("finished_at", sa.String),
)
_judgements = sa.Table(
    "judgements", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rater", sa.String, sa.ForeignKey("raters.id"), nullable=False),
    sa.Column("trial", sa.String, nullable=False),
    sa.Column("answer", sa.String, nullable=False),
    sa.Column("shown", sa.Text, nullable=False),
    sa.Column("response_ms", sa.Integer),
    sa.Column("answered_at", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.UniqueConstraint("rater", "trial", name="one_answer_per_trial"),
)


class DoubleAnswer(ValueError):
    """The rater already answered this trial; nothing was stored."""


@dataclass(frozen=True)
class Rater:
    id: str
    number: int
    platform: str
    plan_seed: str
    external: dict[str, Any]
    started_at: str
    finished_at: str | None


@dataclass(frozen=True)
class Judgement:
    rater: str
    trial: str
    answer: str
    shown: tuple[str, ...]
    response_ms: int | None
    answered_at: str
    source: str


def _rater(row: Any) -> Rater:
    return Rater(row["id"], row["number"], row["platform"], row["plan_seed"], json.loads(row["external"]),
                 row["started_at"], row["finished_at"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Responses:
    """The responses database of one study (made on first use)."""

    def __init__(self, manifest: Manifest, path: str | Path | None = None) -> None:
        assert manifest.folder is not None or path is not None
        self.manifest = manifest
        self.path = Path(path) if path is not None else Path(manifest.folder) / DB_FILE
        self.engine = sa.create_engine(f"sqlite:///{self.path}", future=True)

        @sa.event.listens_for(self.engine, "connect")
        def _pragmas(connection, _record) -> None:  # every pooled connection: WAL, durable commits, foreign keys
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        _metadata.create_all(self.engine)
        digest = manifest.digest()
        with self.engine.begin() as conn:
            stored = conn.execute(sa.select(_meta.c.value).where(_meta.c.key == "manifest_sha256")).scalar()
            if stored is None:
                conn.execute(sa.insert(_meta).values(key="manifest_sha256", value=digest))
            elif stored != digest:
                raise StudyError(str(self.path), "holds responses to another manifest (manifest.json was changed "
                                 "or replaced after raters answered); restore that manifest, or move the database")

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------------ raters

    def rater(self, rater_id: str) -> Rater | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_raters).where(_raters.c.id == rater_id)).mappings().first()
        return None if row is None else _rater(row)

    def rater_for(self, rater_id: str, platform: str = "web", external: dict[str, Any] | None = None) -> Rater:
        """The rater ``rater_id``, registered with the next arrival number on first sight (one statement, so two
        raters arriving at once never share a number)."""
        found = self.rater(rater_id)
        if found is not None:
            return found
        number = sa.select(sa.func.coalesce(sa.func.max(_raters.c.number) + 1, 0)).scalar_subquery()
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(_raters).values(id=rater_id, number=number, platform=platform,
                                                       plan_seed=str(rater_seed(self.manifest, rater_id)),
                                                       external=json.dumps(external or {}, sort_keys=True),
                                                       started_at=_now()))
        except sa.exc.IntegrityError:  # registered meanwhile by a concurrent request
            pass
        found = self.rater(rater_id)
        assert found is not None
        return found

    def raters(self) -> list[Rater]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_raters).order_by(_raters.c.number)).mappings().all()
        return [_rater(r) for r in rows]

    def mark_finished(self, rater_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(_raters).where((_raters.c.id == rater_id) & _raters.c.finished_at.is_(None))
                         .values(finished_at=_now()))

    # ------------------------------------------------------------------------------------------------ answers

    def record(self, rater_id: str, trial: str, answer: str, shown: Iterable[str], response_ms: int | None,
               source: str = "web", answered_at: str | None = None) -> None:
        """Store one judgement, committed before returning; :class:`DoubleAnswer` (nothing stored) when the rater
        already answered ``trial``. Callers validate the values against the rater's plan first."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(_judgements).values(
                    rater=rater_id, trial=trial, answer=answer, shown=json.dumps(list(shown)),
                    response_ms=response_ms, answered_at=answered_at or _now(), source=source))
        except sa.exc.IntegrityError as exc:
            if "one_answer_per_trial" in str(exc) or "UNIQUE" in str(exc):
                raise DoubleAnswer(f"rater {rater_id} already answered trial {trial}") from None
            raise

    def answered(self, rater_id: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(_judgements.c.trial).where(_judgements.c.rater == rater_id)).scalars())

    def judgements(self) -> list[Judgement]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_judgements).order_by(_judgements.c.id)).mappings().all()
        return [Judgement(r["rater"], r["trial"], r["answer"], tuple(json.loads(r["shown"])), r["response_ms"],
                          r["answered_at"], r["source"]) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_judgements)).scalar())
