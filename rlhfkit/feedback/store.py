"""The annotation store: raters, campaigns, items, per-rater assignments and labels in one SQL database (SQLAlchemy 2).

SQLite by default (a file such as ``annotations.db``); any SQLAlchemy URL works, e.g.
``postgresql+psycopg://user@host/db``. Tables are created when a :class:`Store` opens the database.

The model, in one paragraph: a *campaign* holds *items* (a prompt and its responses: a pair for pairwise campaigns, K
for ranking ones). At creation each item gets exactly ``raters_per_item`` distinct raters (an *assignment* per rater;
UNIQUE(item, rater), so no rater sees an item twice), and every assignment records the order the responses are
*displayed* in, drawn at random per rater. A rater answers in display terms ("A", "B", "tie", or an order of displayed
positions); the store maps that back to the underlying responses, so stored labels are *canonical*: choice "0" = response
0 won, "1" = response 1 won, "tie"; ranks[i] = rank of response i (1 = best). Export therefore never depends on what a
rater happened to see first. A label is unique per assignment (UNIQUE constraint): a retried submission returns the
stored label instead of adding a row, which makes submission idempotent; a *different* answer to an answered
assignment is refused (:class:`AnswerConflict`, HTTP 409): a saved label is final, the earlier answer stands.
Export refuses a campaign whose items do not all have their ``raters_per_item`` labels (:class:`IncompleteError`)
unless ``partial=True``, and leaves out gold items (quality checks with known answers, not training data).

A new SQLite file is created readable by its owner only (0600; SQLite gives its -wal and -shm files the same mode),
and runs with ``journal_mode=WAL`` and ``synchronous=FULL``: a label the API acknowledged is on disk, and survives
a power cut or an OS crash, not only a killed server (one fsync per commit, well below a rater's pace).

Python API (the pipeline calls this)::

    store = Store("sqlite:///annotations.db")
    token = store.add_rater("alice")            # shown once; only its sha256 is stored
    store.create_campaign("round1", [{"prompt": "...", "responses": ["...", "..."]}], raters_per_item=3)
    store.progress("round1")                     # {"labelled_items", "total_items", "labels", "required_labels"}
    rows = store.export("round1", adjudication="majority")   # preference rows, once every item has its labels
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import random
import secrets
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from rlhfkit.data.schemas import DataError, PromptExample, parse_preference
from rlhfkit.feedback.agreement import adjudicate, group_report, quality_report

log = logging.getLogger(__name__)

KINDS = ("pairwise", "ranking")
PAIR_MODES = ("chain", "all")
ADJUDICATIONS = ("majority", "median", "none")
CHOICES = ("0", "1", "tie")  # canonical: response 0 won, response 1 won, tie
DISPLAY_CHOICES = ("A", "B", "tie")  # what a rater sees and sends
DEFAULT_DB = "sqlite:///annotations.db"
MAX_REASON = 10_000
MAX_ID = 2**63 - 1  # ids are 64-bit signed integers in every supported database
T = TypeVar("T")


class NotFoundError(ValueError):
    """A campaign, rater or assignment that does not exist (HTTP 404; one line in the CLI)."""


class ForbiddenError(PermissionError):
    """A rater reaching for an assignment that is not theirs (HTTP 403)."""


class AnswerConflict(Exception):
    """A different answer to an assignment that already has a label (HTTP 409): the earlier answer stands.

    ``label`` is the stored label in display terms (what the rater answered first)."""

    def __init__(self, assignment_id: int, label: dict[str, Any]) -> None:
        super().__init__(
            f"assignment {assignment_id} is already labelled and a saved label cannot be changed: "
            "the earlier answer stands"
        )
        self.assignment_id = assignment_id
        self.label = label


class IncompleteError(ValueError):
    """Export of a campaign whose items do not all have their raters' labels yet (HTTP 409; exit 2 in the CLI)."""


# ---------------------------------------------------------------- tables


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Rater(Base):
    __tablename__ = "annotate_raters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the bearer token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RaterAttribute(Base):
    """Optional rater attributes (e.g. age=18-29, region=EU) for demographic audits: shown to admins only, never to
    raters. A table of its own, so that a database made before attributes existed gains it on open (create_all)."""

    __tablename__ = "annotate_rater_attributes"
    __table_args__ = (UniqueConstraint("rater_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("annotate_raters.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[str] = mapped_column(String(100))


class Campaign(Base):
    __tablename__ = "annotate_campaigns"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    raters_per_item: Mapped[int] = mapped_column(Integer)
    rubric: Mapped[str] = mapped_column(Text, default="")
    dimensions: Mapped[list] = mapped_column(JSON, default=list)
    strength_scale: Mapped[int] = mapped_column(Integer, default=3)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Item(Base):
    __tablename__ = "annotate_items"
    __table_args__ = (UniqueConstraint("campaign_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("annotate_campaigns.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # 0-based index in the campaign: the item id in exports/reports
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of {"role", "content"} messages
    responses: Mapped[list] = mapped_column(JSON)
    gold: Mapped[str | None] = mapped_column(String(8), nullable=True)  # known answer "0" / "1" / "tie"
    origin: Mapped[dict] = mapped_column(JSON, default=dict)  # where the item came from (input row, response indices)


class Assignment(Base):
    __tablename__ = "annotate_assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "rater_id"),  # a rater never gets the same item twice
        Index("ix_annotate_assignments_queue", "campaign_id", "rater_id", "sequence"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("annotate_campaigns.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("annotate_items.id", ondelete="CASCADE"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("annotate_raters.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)  # position in this rater's queue
    display_order: Mapped[list] = mapped_column(JSON)  # display_order[p] = response index shown at position p


class Label(Base):
    __tablename__ = "annotate_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # UNIQUE: one label per assignment, so a retried submission cannot add a second row
    assignment_id: Mapped[int] = mapped_column(ForeignKey("annotate_assignments.id", ondelete="CASCADE"), unique=True)
    choice: Mapped[str | None] = mapped_column(String(8), nullable=True)  # canonical "0" / "1" / "tie" (pairwise)
    strength: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1..strength_scale; 0 for a tie
    dimensions: Mapped[dict] = mapped_column(JSON, default=dict)  # {dimension: canonical choice}
    ranks: Mapped[list | None] = mapped_column(JSON, nullable=True)  # ranks[i] of response i, 1 = best (ranking)
    reason: Mapped[str] = mapped_column(Text, default="")
    shown: Mapped[dict] = mapped_column(JSON, default=dict)  # the answer as the rater gave it, in display terms
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # time on the item, as the page measured it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# ---------------------------------------------------------------- small pure helpers


def hash_token(token: str) -> str:
    """sha256 hex of a bearer token: what the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(token: str, expected_hash: str) -> bool:
    """Constant-time comparison of a presented token against a stored hash."""
    return hmac.compare_digest(hash_token(token), expected_hash)


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def normalize_url(url: str | Path) -> str:
    """A SQLAlchemy URL, or a bare file path meaning a SQLite file; ``postgresql://`` uses psycopg 3 when psycopg2 is
    not installed (SQLAlchemy's default PostgreSQL driver is psycopg2)."""
    url = str(url)
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):
        try:
            # optional driver, only probed for (psycopg2 is not a dependency)
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _prompt_ok(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return True
    return (
        isinstance(prompt, (list, tuple))
        and bool(prompt)
        and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    )


def _gold_choice(value: Any, where: str) -> str | None:
    """A gold answer in any accepted spelling -> canonical "0" / "1" / "tie"."""
    if value is None:
        return None
    key = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    mapping = {"0": "0", "a": "0", "1": "1", "b": "1", "tie": "tie"}
    if key not in mapping:
        raise DataError(where, f'field "gold" must be "0", "1" or "tie" (or "a" / "b"), got {value!r}')
    return mapping[key]


def rows_to_items(rows: Iterable[tuple[int, Any]], source: str, gold: bool = False) -> list[dict[str, Any]]:
    """File rows -> campaign items ``{"prompt", "responses", "gold"?}``. Accepted rows (one per line):

    - ``rlhfkit sample`` output ``{"prompt", "responses": [...]}`` (extra keys such as "scores" are ignored);
    - a pair ``{"prompt", "a", "b"}``;
    - a preference pair ``{"prompt", "chosen", "rejected"}`` (any shape the preference loader accepts).
    Any row may carry ``"gold": "0" | "1" | "tie"`` ("a" / "b" too). With ``gold=True`` (a gold file) every row needs a
    known answer: a chosen/rejected row means "chosen" (response 0) won, or a tie when ``"tie": true``.
    """
    items: list[dict[str, Any]] = []
    for index, row in rows:
        where = f"{source}:{index}"
        if not isinstance(row, Mapping):
            raise DataError(where, f"expected an object, got {type(row).__name__}")
        answer = _gold_choice(row.get("gold"), where)
        if "responses" in row:
            prompt, responses = row.get("prompt"), row["responses"]
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise DataError(where, 'field "responses" must be a list of strings')
        elif "a" in row or "b" in row:
            prompt, responses = row.get("prompt"), [row.get("a"), row.get("b")]
            for key, value in zip("ab", responses):
                if not isinstance(value, str):
                    raise DataError(where, f'field "{key}" must be a string, got {type(value).__name__}')
        elif "chosen" in row or "rejected" in row:
            (pref,) = parse_preference(row, where)
            prompt, responses = PromptExample(pref.prompt).to_row()["prompt"], [pref.chosen, pref.rejected]
            if gold and answer is None:
                answer = "tie" if pref.tie else "0"
        else:
            raise DataError(where, 'expected "responses", "a"/"b" or "chosen"/"rejected" fields')
        if prompt is None:
            raise DataError(where, 'field "prompt" is missing')
        if not _prompt_ok(prompt):
            raise DataError(where, 'field "prompt" must be a string or a list of {"role", "content"} messages')
        if gold and answer is None:
            raise DataError(where, 'gold row has no known answer: add "gold": "0" | "1" | "tie"')
        item: dict[str, Any] = {
            "prompt": prompt,
            "responses": list(responses),
            "origin": {"file": source, "row": index},
        }
        if answer is not None:
            item["gold"] = answer
        items.append(item)
    return items


def signed_strength(choice: str, strength: float) -> float:
    """+strength when response 0 won, -strength when response 1 won, 0 for a tie (the median adjudication's axis)."""
    return strength if choice == "0" else -strength if choice == "1" else 0.0


def rank_positions(scores: Sequence[float]) -> list[int]:
    """Competition ranks (1 = lowest score), equal scores share the lower rank: [2.0, 1.0, 2.0] -> [2, 1, 2]."""
    return [1 + sum(1 for t in scores if t < s) for s in scores]


def adjudicate_ranking(rankings: Sequence[Sequence[int]], method: str = "majority") -> tuple[list[int], float, bool]:
    """Combine K-way rankings of one item: (ranks, share of raters whose ranking equals the result, disagreement).

    "majority": Borda count (rank by mean rank, de Borda 1781); "median": rank by each response's median rank.
    """
    if method not in ("majority", "median"):
        raise ValueError(f"adjudication must be majority or median for rankings, got {method!r}")
    if not rankings:
        raise ValueError("adjudicate_ranking: no rankings")
    k = len(rankings[0])
    reduce = statistics.fmean if method == "majority" else statistics.median
    combined = rank_positions([reduce([r[i] for r in rankings]) for i in range(k)])
    agree = sum(1 for r in rankings if list(r) == combined) / len(rankings)
    return combined, agree, len({tuple(r) for r in rankings}) > 1


@dataclass(frozen=True)
class RaterInfo:
    id: int
    name: str


# ---------------------------------------------------------------- the store


class Store:
    """Annotation campaigns in one SQL database. Thread-safe: every call opens its own session."""

    def __init__(self, url: str | Path = DEFAULT_DB, echo: bool = False) -> None:
        self.url = normalize_url(url)
        try:
            parsed = make_url(self.url)
        except ArgumentError as e:
            raise ValueError(f"not a database URL: {url!r} (use a SQLite file path or a SQLAlchemy URL)") from e
        kwargs: dict[str, Any] = {"echo": echo}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            path = parsed.database or ""
            memory = path in ("", ":memory:") or path.startswith("file::memory:")
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if memory:
                kwargs["poolclass"] = StaticPool  # one shared connection, or each thread would see its own empty DB
            else:
                folder = Path(path).expanduser().resolve().parent
                if not folder.is_dir():
                    raise FileNotFoundError(f"database folder does not exist: {folder} (from --db {url})")
                if not path.startswith("file:"):
                    _private_file(Path(path).expanduser())
                kwargs.update(pool_size=10, max_overflow=20)
        else:
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL server leaves dead pooled connections
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as e:  # server down, bad credentials, unwritable file: one line, not a traceback
            first = str(e.orig if e.orig is not None else e).strip().splitlines()[0]
            raise ConnectionError(f"cannot open database {self!r}: {first}") from e
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run a write in its own session; SQLite "database is locked" past the busy timeout is retried briefly."""
        for attempt in range(5):
            try:
                with self._session() as s:
                    return fn(s)
            except OperationalError as e:
                if not (self.is_sqlite and "locked" in str(e).lower()) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ raters

    def add_rater(self, name: str, attributes: Mapping[str, str] | None = None) -> str:
        """Create a rater, with optional attributes for audits ({"age": "18-29", "region": "EU"}: admins see them,
        raters never do); returns their bearer token (only its sha256 is stored: show it once)."""
        name = _check_name(name, "rater name")
        attrs = _check_attributes(attributes)
        token = new_token()

        def add(s: Session) -> None:
            if s.scalar(select(Rater.id).where(Rater.name == name)) is not None:
                raise ValueError(
                    f"rater {name!r} already exists: `rlhfkit annotate add-rater {name} --reset` gives them a new token"
                )
            rater = Rater(name=name, token_hash=hash_token(token))
            s.add(rater)
            s.flush()
            s.add_all(RaterAttribute(rater_id=rater.id, key=k, value=v) for k, v in attrs.items())
            s.commit()

        self._write(add)
        return token

    def set_rater_attributes(self, name: str, attributes: Mapping[str, str]) -> None:
        """Replace a rater's attributes (an empty mapping removes them)."""
        attrs = _check_attributes(attributes)

        def put(s: Session) -> None:
            rater_id = s.scalar(select(Rater.id).where(Rater.name == name))
            if rater_id is None:
                raise NotFoundError(f"no rater named {name!r}")
            for old in s.scalars(select(RaterAttribute).where(RaterAttribute.rater_id == rater_id)):
                s.delete(old)
            s.flush()
            s.add_all(RaterAttribute(rater_id=rater_id, key=k, value=v) for k, v in attrs.items())
            s.commit()

        self._write(put)

    def rater_attributes(self) -> dict[str, dict[str, str]]:
        """{rater name: {attribute: value}} of every rater (raters without attributes map to {}). Admin data."""
        with self._session() as s:
            out: dict[str, dict[str, str]] = {name: {} for name in s.scalars(select(Rater.name).order_by(Rater.id))}
            rows = s.execute(
                select(Rater.name, RaterAttribute.key, RaterAttribute.value)
                .join(RaterAttribute, RaterAttribute.rater_id == Rater.id)
                .order_by(Rater.id, RaterAttribute.key)
            )
            for name, key, value in rows:
                out[name][key] = value
        return out

    def reset_token(self, name: str) -> str:
        """Issue a new token for an existing rater (the old one stops working); returns it."""
        token = new_token()

        def reset(s: Session) -> None:
            rater = s.scalar(select(Rater).where(Rater.name == name))
            if rater is None:
                raise NotFoundError(f"no rater named {name!r}")
            rater.token_hash = hash_token(token)
            s.commit()

        self._write(reset)
        return token

    def raters(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(Rater.name).order_by(Rater.id)))

    def rater_by_token(self, token: str) -> RaterInfo | None:
        """The rater a bearer token belongs to, or None. Looked up by hash, then compared in constant time."""
        if not token:
            return None
        digest = hash_token(token)
        with self.engine.connect() as con:  # Core, not a Session: this runs on every request
            row = con.execute(select(Rater.id, Rater.name, Rater.token_hash).where(Rater.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return RaterInfo(row.id, row.name)

    # ------------------------------------------------------------ campaigns

    def create_campaign(
        self,
        name: str,
        items: Sequence[Mapping[str, Any]],
        kind: str = "pairwise",
        raters_per_item: int = 1,
        rubric: str = "",
        dimensions: Sequence[str] = (),
        strength_scale: int = 3,
        raters: Sequence[str] | None = None,
        seed: int = 0,
        pairs: str = "chain",
    ) -> int:
        """Create a campaign and assign its items; returns the campaign id.

        items: dicts ``{"prompt": str | messages, "responses": [str, ...], "gold"?: "0" | "1" | "tie"}``. Duplicate
        responses of an item are dropped; an item left with fewer than two is skipped (logged). In a pairwise campaign
        an item with K > 2 responses becomes pairs: ``pairs="chain"`` gives (r1, r2), ..., (r_{K-1}, r_K), ``"all"``
        every pair. A ranking campaign shows all K responses. Gold answers are for pairwise items of two responses.
        raters: the pool (names) to draw from; None = every rater in the store. Each item gets ``raters_per_item``
        distinct raters, least-loaded first (loads differ by at most one), ties broken by ``seed``; each rater's
        queue order and every display order are seeded random draws too.
        """
        name = _check_name(name, "campaign name")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if pairs not in PAIR_MODES:
            raise ValueError(f"pairs must be one of {', '.join(PAIR_MODES)}, got {pairs!r}")
        if isinstance(raters_per_item, bool) or not isinstance(raters_per_item, int) or raters_per_item < 1:
            raise ValueError(f"raters_per_item must be a positive integer, got {raters_per_item!r}")
        if isinstance(strength_scale, bool) or not isinstance(strength_scale, int) or not 1 <= strength_scale <= 10:
            raise ValueError(f"strength_scale must be an integer in [1, 10], got {strength_scale!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or abs(seed) > MAX_ID:
            raise ValueError(f"seed must be a 64-bit integer, got {str(seed)[:40]}")
        if not isinstance(rubric, str):
            raise ValueError(f"rubric must be a string, got {type(rubric).__name__}")
        dims = [_check_name(d, "dimension") for d in dimensions]
        if len(set(dims)) != len(dims):
            raise ValueError(f"dimensions must be distinct, got {dims}")
        if dims and kind != "pairwise":
            raise ValueError("dimensions are for pairwise campaigns (each dimension gets its own A / B / tie)")
        prepared = _prepare_items(items, kind, pairs)

        def create(s: Session) -> int:
            if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
                raise ValueError(f"campaign {name!r} already exists")
            if raters is None:
                pool = list(s.scalars(select(Rater).order_by(Rater.id)))
            else:
                names = [str(r) for r in raters]
                if len(set(names)) != len(names):
                    raise ValueError(f"raters must be distinct, got {names}")
                found = {r.name: r for r in s.scalars(select(Rater).where(Rater.name.in_(names)))}
                missing = [n for n in names if n not in found]
                if missing:
                    raise NotFoundError(f"no rater named {missing[0]!r} (add raters first: rlhfkit annotate add-rater)")
                pool = [found[n] for n in names]
            if len(pool) < raters_per_item:
                raise ValueError(
                    f"raters_per_item={raters_per_item} but only {len(pool)} rater(s) available: add raters first "
                    "(rlhfkit annotate add-rater NAME)"
                )
            campaign = Campaign(
                name=name,
                kind=kind,
                raters_per_item=raters_per_item,
                rubric=rubric,
                dimensions=dims,
                strength_scale=strength_scale,
                seed=seed,
            )
            s.add(campaign)
            s.flush()
            db_items = [
                Item(campaign_id=campaign.id, position=i, prompt=p, responses=r, gold=g, origin=o)
                for i, (p, r, g, o) in enumerate(prepared)
            ]
            s.add_all(db_items)
            s.flush()
            rng = random.Random(f"{seed}:{name}")
            load = {r.id: 0 for r in pool}
            queues: dict[int, list[Item]] = defaultdict(list)
            for item in db_items:
                # least-loaded raters first, random among equals: exactly raters_per_item distinct raters per item
                chosen = sorted(pool, key=lambda r: (load[r.id], rng.random()))[:raters_per_item]
                for r in chosen:
                    load[r.id] += 1
                    queues[r.id].append(item)
            assignments = []
            for rater_id, queue in queues.items():
                rng.shuffle(queue)  # per-rater order: gold items do not sit at recognizable positions
                for sequence, item in enumerate(queue):
                    order = list(range(len(item.responses)))
                    rng.shuffle(order)  # display randomization, recorded per assignment
                    assignments.append(
                        Assignment(
                            campaign_id=campaign.id,
                            item_id=item.id,
                            rater_id=rater_id,
                            sequence=sequence,
                            display_order=order,
                        )
                    )
            s.add_all(assignments)
            s.commit()
            log.info("campaign %r: %d items, %d assignments", name, len(db_items), len(assignments))
            return campaign.id

        return self._write(create)

    def campaigns(self) -> list[dict[str, Any]]:
        """Every campaign with its settings and progress."""
        with self._session() as s:
            names = list(s.scalars(select(Campaign.name).order_by(Campaign.id)))
        return [self.campaign_info(n) for n in names]

    def campaign_info(self, name: str) -> dict[str, Any]:
        with self._session() as s:
            c = self._campaign(s, name)
            info = _settings(c)
        return {**info, **self.progress(name)}

    def progress(self, name: str) -> dict[str, int]:
        """labelled_items (items with all their raters' labels), total_items, labels, required_labels."""
        with self._session() as s:
            c = self._campaign(s, name)
            total = s.scalar(select(func.count(Item.id)).where(Item.campaign_id == c.id)) or 0
            per_item = (
                select(Assignment.item_id, func.count(Label.id).label("n"))
                .join(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.campaign_id == c.id)
                .group_by(Assignment.item_id)
                .subquery()
            )
            labels = s.scalar(select(func.coalesce(func.sum(per_item.c.n), 0))) or 0
            done = s.scalar(select(func.count()).select_from(per_item).where(per_item.c.n >= c.raters_per_item)) or 0
        return {
            "labelled_items": int(done),
            "total_items": int(total),
            "labels": int(labels),
            "required_labels": int(total) * c.raters_per_item,
        }

    def append_items(self, name: str, items: Sequence[Mapping[str, Any]]) -> list[int]:
        """Add items to an existing campaign (a live campaign grows while the policy trains); returns their positions.

        Items are validated like create_campaign's (pairs of identical responses are skipped). Each gets the campaign's
        ``raters_per_item`` distinct raters among every rater in the store now (raters added since the campaign began
        included), least-loaded in this campaign first, and goes to the end of their queues (raters label in order)."""
        with self._session() as s:
            c = self._campaign(s, name)
            kind, per_item, seed = c.kind, c.raters_per_item, c.seed
        prepared = _prepare_items(items, kind, "chain")

        def append(s: Session) -> list[int]:
            c = self._campaign(s, name)
            pool = list(s.scalars(select(Rater).order_by(Rater.id)))
            if len(pool) < per_item:
                raise ValueError(f"raters_per_item={per_item} but only {len(pool)} rater(s) in the store")
            last = s.scalar(select(func.max(Item.position)).where(Item.campaign_id == c.id))
            start = 0 if last is None else last + 1
            rows = s.execute(
                select(Assignment.rater_id, func.count(Assignment.id), func.max(Assignment.sequence))
                .where(Assignment.campaign_id == c.id)
                .group_by(Assignment.rater_id)
            ).all()
            load = {r.id: 0 for r in pool} | {rid: int(n) for rid, n, _ in rows}
            next_seq = {r.id: 0 for r in pool} | {rid: int(m) + 1 for rid, _, m in rows}
            db_items = [
                Item(campaign_id=c.id, position=start + i, prompt=p, responses=r, gold=g, origin=o)
                for i, (p, r, g, o) in enumerate(prepared)
            ]
            s.add_all(db_items)
            s.flush()
            rng = random.Random(f"{seed}:{name}:{start}")
            for item in db_items:
                for r in sorted(pool, key=lambda r: (load[r.id], rng.random()))[:per_item]:
                    load[r.id] += 1
                    order = list(range(len(item.responses)))
                    rng.shuffle(order)  # display randomization, recorded per assignment
                    s.add(
                        Assignment(
                            campaign_id=c.id,
                            item_id=item.id,
                            rater_id=r.id,
                            sequence=next_seq[r.id],
                            display_order=order,
                        )
                    )
                    next_seq[r.id] += 1
            s.commit()
            return [item.position for item in db_items]

        return self._write(append)

    def items(self, name: str) -> list[dict[str, Any]]:
        """Every item of the campaign: {"position", "prompt", "responses", "origin"}, in order."""
        _c, items = self._items(name)
        return [
            {"position": i.position, "prompt": i.prompt, "responses": list(i.responses), "origin": dict(i.origin or {})}
            for i in items
        ]

    def new_labels(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        """The campaign's labels with an id above ``after``, oldest first: {"id", "item", "rater", "choice",
        "strength", "ranks"} (canonical); a reader keeps the largest id it saw and asks for what came since."""
        with self._session() as s:
            c = self._campaign(s, name)
            rows = s.execute(
                select(Label, Item.position, Rater.name)
                .join(Assignment, Label.assignment_id == Assignment.id)
                .join(Item, Assignment.item_id == Item.id)
                .join(Rater, Assignment.rater_id == Rater.id)
                .where(Assignment.campaign_id == c.id, Label.id > after)
                .order_by(Label.id)
            ).all()
        return [
            {
                "id": lab.id,
                "item": pos,
                "rater": rater,
                "choice": lab.choice,
                "strength": lab.strength,
                "ranks": lab.ranks,
            }
            for lab, pos, rater in rows
        ]

    @staticmethod
    def _campaign(s: Session, name: str) -> Campaign:
        c = s.scalar(select(Campaign).where(Campaign.name == name))
        if c is None:
            raise NotFoundError(f"no campaign named {name!r}")
        return c

    # ------------------------------------------------------------ a rater's view

    def rater_campaigns(self, rater_id: int) -> list[dict[str, Any]]:
        """The campaigns this rater has items in, with their own progress."""
        with self._session() as s:
            rows = s.execute(
                select(Campaign, func.count(Assignment.id), func.count(Label.id))
                .join(Assignment, Assignment.campaign_id == Campaign.id)
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.rater_id == rater_id)
                .group_by(Campaign.id)
                .order_by(Campaign.id)
            ).all()
        return [{**_settings(c), "progress": {"done": int(d), "total": int(t)}} for c, t, d in rows]

    def rater_progress(self, rater_id: int, campaign_id: int) -> dict[str, int]:
        with self._session() as s:
            total, done = s.execute(
                select(func.count(Assignment.id), func.count(Label.id))
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.rater_id == rater_id, Assignment.campaign_id == campaign_id)
            ).one()
        return {"done": int(done), "total": int(total)}

    def assignment_progress(self, rater_id: int, assignment_id: int) -> dict[str, int]:
        """The rater's progress in the campaign of one of their assignments (one query)."""
        _check_id(assignment_id)
        campaign = select(Assignment.campaign_id).where(Assignment.id == assignment_id).scalar_subquery()
        with self.engine.connect() as s:
            total, done = s.execute(
                select(func.count(Assignment.id), func.count(Label.id))
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.rater_id == rater_id, Assignment.campaign_id == campaign)
            ).one()
        return {"done": int(done), "total": int(total)}

    def rater_queue(self, rater_id: int, campaign: str) -> list[dict[str, Any]]:
        """This rater's assignments in the campaign, in queue order: [{"id", "labelled"}]."""
        with self._session() as s:
            c = self._campaign(s, campaign)
            rows = s.execute(
                select(Assignment.id, Label.id)
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.rater_id == rater_id, Assignment.campaign_id == c.id)
                .order_by(Assignment.sequence)
            ).all()
        return [{"id": a, "labelled": lab is not None} for a, lab in rows]

    def next_assignment(self, rater_id: int, campaign: str) -> dict[str, Any] | None:
        """The first unlabelled assignment in this rater's queue (so a rater resumes where they left off), or None."""
        with self._session() as s:
            c = self._campaign(s, campaign)
            assignment_id = s.scalar(
                select(Assignment.id)
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.rater_id == rater_id, Assignment.campaign_id == c.id, Label.id.is_(None))
                .order_by(Assignment.sequence)
                .limit(1)
            )
        return None if assignment_id is None else self.assignment_view(rater_id, assignment_id)

    def assignment_view(self, rater_id: int, assignment_id: int) -> dict[str, Any]:
        """What the rater sees: responses in their display order, and their label (display terms) if they gave one.

        The canonical order is never sent: for items made from chosen/rejected pairs it would give the answer away.
        """
        with self._session() as s:
            a, item, c, label = self._owned(s, rater_id, assignment_id)
            view = {
                "id": a.id,
                "campaign": c.name,
                "kind": c.kind,
                "rubric": c.rubric,
                "dimensions": list(c.dimensions),
                "strength_scale": c.strength_scale,
                "prompt": item.prompt,
                "responses": [item.responses[i] for i in a.display_order],
                "label": None if label is None else _display_label(label),
            }
        view["progress"] = self.rater_progress(rater_id, c.id)
        return view

    @staticmethod
    def _owned(s: Session, rater_id: int, assignment_id: int) -> tuple[Assignment, Item, Campaign, Label | None]:
        _check_id(assignment_id)
        a = s.get(Assignment, assignment_id)
        if a is None:
            raise NotFoundError(f"no assignment {assignment_id}")
        if a.rater_id != rater_id:
            raise ForbiddenError(f"assignment {assignment_id} is not yours")
        item = s.get(Item, a.item_id)
        c = s.get(Campaign, a.campaign_id)
        label = s.scalar(select(Label).where(Label.assignment_id == a.id))
        assert item is not None and c is not None
        return a, item, c, label

    def submit(self, rater_id: int, assignment_id: int, answer: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store a rater's answer (display terms); returns (the stored label in display terms, created).

        Pairwise answer: {"choice": "A" | "B" | "tie", "strength": 1..scale (not for a tie), "dimensions":
        {dim: "A" | "B" | "tie"} for every campaign dimension, "reason"?: str, "seconds"?: float}.
        Ranking answer: {"order": [displayed positions, best first], "reason"?, "seconds"?}.
        Idempotent: when the assignment already has the same answer (a retried request after a lost response, or two
        racing ones: the UNIQUE constraint lets exactly one insert win), the stored label is returned with
        created=False. A different answer (another tab, an edited retry) raises :class:`AnswerConflict` carrying the
        stored label: a saved label is never changed and never silently replaced. Only ``seconds`` may differ.
        """
        _check_id(assignment_id)

        def run(s: Session) -> tuple[dict[str, Any], bool]:
            row = s.execute(  # one round trip: the assignment, its campaign, its label if any (the hot path)
                select(Assignment, Campaign, Label)
                .join(Campaign, Campaign.id == Assignment.campaign_id)
                .outerjoin(Label, Label.assignment_id == Assignment.id)
                .where(Assignment.id == assignment_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no assignment {assignment_id}")
            a, c, existing = row
            if a.rater_id != rater_id:
                raise ForbiddenError(f"assignment {assignment_id} is not yours")
            columns = _canonical_label(c, a, answer)  # a malformed answer is a 422 even when a label exists
            if existing is not None:
                return _same_or_conflict(existing, columns, assignment_id)
            label = Label(assignment_id=a.id, **columns)
            s.add(label)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # another request stored this assignment's label first: compare with that one
                stored = s.scalar(select(Label).where(Label.assignment_id == a.id))
                if stored is None:
                    raise
                return _same_or_conflict(stored, columns, assignment_id)
            return _display_label(label), True

        return self._write(run)

    # ------------------------------------------------------------ results

    def labels(self, name: str) -> list[dict[str, Any]]:
        """Every label of the campaign, canonical, with its item, rater and display order: one dict per label."""
        with self._session() as s:
            c = self._campaign(s, name)
            rows = s.execute(
                select(Label, Assignment, Item.position, Rater.name)
                .join(Assignment, Label.assignment_id == Assignment.id)
                .join(Item, Assignment.item_id == Item.id)
                .join(Rater, Assignment.rater_id == Rater.id)
                .where(Assignment.campaign_id == c.id)
                .order_by(Item.position, Label.id)
            ).all()
        return [
            {
                "item": pos,
                "rater": rater,
                "choice": lab.choice,
                "strength": lab.strength,
                "dimensions": dict(lab.dimensions or {}),
                "ranks": lab.ranks,
                "reason": lab.reason,
                "display_order": list(a.display_order),
                "shown": dict(lab.shown or {}),
                "seconds": lab.seconds,
                "created_at": lab.created_at.isoformat() if lab.created_at else None,
            }
            for lab, a, pos, rater in rows
        ]

    def _items(self, name: str) -> tuple[Campaign, list[Item]]:
        with self._session() as s:
            c = self._campaign(s, name)
            items = list(s.scalars(select(Item).where(Item.campaign_id == c.id).order_by(Item.position)))
        return c, items

    def export(
        self, name: str, adjudication: str = "majority", dimension: str | None = None, partial: bool = False
    ) -> list[dict[str, Any]]:
        """Labels as training rows. Gold items are left out: they check raters (see :meth:`quality`), and their
        answers are known, not collected.

        A campaign with items still short of ``raters_per_item`` labels raises :class:`IncompleteError`, since
        adjudicating partial votes would quietly give, e.g., one rater's answer confidence 1.0; ``partial=True``
        exports what there is (items without labels are left out, the others use the labels they have).

        Pairwise -> preference rows {"prompt", "chosen", "rejected", "tie", "strength", "rater", "confidence"}:
        "none" = one row per label (rater = their name, confidence 1.0: one rater agrees with itself); "majority" /
        "median" = one row per item (rater "adjudicated", confidence = share of the item's labels that agree with the
        result; see agreement.adjudicate). A tie keeps response 0 as "chosen". A campaign with rubric dimensions adds
        ``"dimensions": {dim: "chosen" | "rejected" | "tie"}`` to every row (each dimension's choice, per label or
        adjudicated per dimension, relative to the row's chosen / rejected): the training rows of a multi-objective
        reward model (`rlhfkit rm objectives=[...]`). ``dimension`` instead exports that rubric dimension's choices as
        the overall one (no strength is collected per dimension, so none is written).
        Ranking -> {"prompt", "responses", "ranks"} rows (lower rank = better), per label with "rater", or combined
        per item (Borda count for "majority", median ranks for "median") with rater "adjudicated" and confidence.
        """
        if adjudication not in ADJUDICATIONS:
            raise ValueError(f"adjudication must be one of {', '.join(ADJUDICATIONS)}, got {adjudication!r}")
        c, items = self._items(name)
        if dimension is not None and dimension not in c.dimensions:
            known = ", ".join(c.dimensions) or "none"
            raise ValueError(f"campaign {name!r} has no dimension {dimension!r} (dimensions: {known})")
        by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for lab in self.labels(name):
            by_item[lab["item"]].append(lab)
        short = sum(1 for item in items if len(by_item.get(item.position, ())) < c.raters_per_item)
        if short and not partial:
            have = sum(len(v) for v in by_item.values())
            raise IncompleteError(
                f"campaign {name!r} is not fully labelled: {short} of {len(items)} items have fewer than "
                f"{c.raters_per_item} label(s) ({have}/{len(items) * c.raters_per_item} labels); wait for the raters, "
                "or export what there is with --partial (API: ?partial=true; Python: partial=True)"
            )
        rows: list[dict[str, Any]] = []
        for item in items:
            labs = by_item.get(item.position)
            if not labs or item.gold is not None:  # gold items are quality checks, not training data
                continue
            if c.kind == "ranking":
                rows.extend(_ranking_rows(item, labs, adjudication))
            else:
                rows.extend(_pairwise_rows(item, labs, adjudication, dimension, () if dimension else c.dimensions))
        return rows

    def quality(self, name: str, adjudication: str = "majority") -> dict[str, Any]:
        """Agreement (agreement.quality_report: Cohen's kappa per rater pair, Fleiss' kappa, Krippendorff's alpha,
        each rater's agreement with the majority and with gold), per rubric dimension too, plus the adjudication with
        the items whose raters disagree. A ranking campaign is scored on the pairwise orders its rankings imply.
        When raters have attributes, "groups" holds agreement.group_report: label distributions and agreement per
        attribute group, and agreement across groups (the demographic audit)."""
        if adjudication not in ("majority", "median"):
            raise ValueError(f"adjudication must be majority or median, got {adjudication!r}")
        c, items = self._items(name)
        labs = self.labels(name)
        gold = {str(i.position): i.gold for i in items if i.gold is not None}
        if c.kind == "ranking":
            flat = [
                {"item": f"{lab['item']}:{i}-{j}", "rater": lab["rater"], "choice": "0" if r[i] < r[j] else "1"}
                for lab in labs
                for r in [lab["ranks"]]
                for i in range(len(r))
                for j in range(i + 1, len(r))
            ]
            report = _report(flat, None)
        else:
            flat = [{"item": str(x["item"]), "rater": x["rater"], "choice": x["choice"]} for x in labs]
            report = _report(flat, gold)
            report["dimensions"] = {
                d: _report(
                    [{"item": str(x["item"]), "rater": x["rater"], "choice": x["dimensions"][d]} for x in labs], None
                )
                for d in c.dimensions
            }
        by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for lab in labs:
            by_item[lab["item"]].append(lab)
        flagged = []
        for item in items:
            group = by_item.get(item.position, [])
            if not group:
                continue
            if c.kind == "ranking":
                result, agree, flag = adjudicate_ranking([g["ranks"] for g in group], adjudication)
                entry: dict[str, Any] = {"ranks": result}
            else:
                choice, strength, flag = adjudicate([(g["choice"], float(g["strength"])) for g in group], adjudication)
                agree = sum(g["choice"] == choice for g in group) / len(group)
                entry = {"choice": choice, "strength": strength}
            if flag:
                flagged.append(
                    {
                        "item": item.position,
                        **entry,
                        "agreement": agree,
                        "labels": {
                            g["rater"]: g["ranks"] if c.kind == "ranking" else [g["choice"], g["strength"]]
                            for g in group
                        },
                    }
                )
        attributes = self.rater_attributes()
        if any(attributes.get(x["rater"]) for x in labs):  # the demographic audit, when raters have attributes
            report["groups"] = group_report(flat, attributes, gold if c.kind != "ranking" else None)
        report.update(
            campaign=c.name,
            kind=c.kind,
            n_items=len(items),
            n_labels=len(labs),
            adjudication={
                "method": adjudication,
                "items": len(by_item),
                "n_disagreements": len(flagged),
                "disagreements": flagged,
            },
        )
        return report


# ---------------------------------------------------------------- internals


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # writers queue instead of failing at once
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer; committed data survives a killed process
    # FULL: each commit's WAL frames are fsynced before the API answers, so an acknowledged label survives a power
    # cut or an OS crash (NORMAL only survives a killed process); one fsync per label is far below a rater's pace
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _private_file(path: Path) -> None:
    """Create a new SQLite file as 0600 (SQLite gives -wal / -shm the database's mode); warn about an open one."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "%s is readable by other users (mode %s): it holds rater token hashes and labels; chmod 600 %s",
            path,
            oct(mode),
            path,
        )


def _check_id(value: Any) -> None:
    """An id beyond 64 bits can exist in no table: a 404, not an overflow deep in the database driver."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise NotFoundError(f"no assignment {str(value)[:40]}")


def _same_or_conflict(stored: Label, columns: Mapping[str, Any], assignment_id: int) -> tuple[dict[str, Any], bool]:
    """A resubmission: the stored label (created=False) when it is the same answer, else AnswerConflict."""
    keys = ("choice", "strength", "dimensions", "ranks", "reason")
    if all((getattr(stored, k) or None) == (columns.get(k) or None) for k in keys):
        return _display_label(stored), False
    raise AnswerConflict(assignment_id, _display_label(stored))


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    value = value.strip()
    if len(value) > 100 or any(ch in value for ch in "\r\n\t|"):
        raise ValueError(f"{what} {value[:40]!r} must be at most 100 characters without tabs, newlines or '|'")
    return value


def _check_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    """Attribute names and values: non-empty strings of at most 100 characters, no tabs, newlines or '|'; a name is
    also free of '=' (the CLI's separator)."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ValueError(f"rater attributes must be a mapping of names to values, got {attributes!r}")
    out: dict[str, str] = {}
    for key, value in attributes.items():
        key = _check_name(key, "attribute name")
        if "=" in key:
            raise ValueError(f"attribute name {key!r} must not contain '='")
        out[key] = _check_name(value, f"attribute {key!r} value")
    return out


def _settings(c: Campaign) -> dict[str, Any]:
    return {
        "name": c.name,
        "kind": c.kind,
        "raters_per_item": c.raters_per_item,
        "rubric": c.rubric,
        "dimensions": list(c.dimensions),
        "strength_scale": c.strength_scale,
    }


def _prepare_items(
    items: Sequence[Mapping[str, Any]], kind: str, pairs: str
) -> list[tuple[Any, list[str], str | None, dict]]:
    """Validate items; dedupe responses; split pairwise items of K > 2 responses into pairs."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"items must be a list of dicts, got {type(items).__name__}")
    out: list[tuple[Any, list[str], str | None, dict]] = []
    skipped = 0
    for n, item in enumerate(items):
        where = f"items[{n}]"
        if not isinstance(item, Mapping):
            raise DataError(where, f"expected a dict with prompt and responses, got {type(item).__name__}")
        prompt, responses = item.get("prompt"), item.get("responses")
        if prompt is None:
            raise DataError(where, 'field "prompt" is missing')
        if not _prompt_ok(prompt):
            raise DataError(where, 'field "prompt" must be a string or a list of {"role", "content"} messages')
        if not isinstance(responses, (list, tuple)) or not all(isinstance(r, str) for r in responses):
            raise DataError(where, 'field "responses" must be a list of strings')
        gold = _gold_choice(item.get("gold"), where)
        distinct = list(dict.fromkeys(responses))  # identical responses carry no preference
        if gold is not None and (kind != "pairwise" or len(responses) != 2):
            raise DataError(where, 'field "gold" needs a pairwise campaign and exactly two responses')
        if len(distinct) < 2:
            skipped += 1
            continue
        if isinstance(prompt, tuple):  # a message tuple (PromptExample.prompt): stored as a JSON list
            prompt = [dict(m) for m in prompt]
        origin = {**dict(item.get("origin") or {}), "item": n}
        if kind == "ranking" or len(distinct) == 2:
            out.append((prompt, distinct, gold, {**origin, "responses": [responses.index(r) for r in distinct]}))
            continue
        k = len(distinct)
        idx = (
            [(i, i + 1) for i in range(k - 1)]
            if pairs == "chain"
            else [(i, j) for i in range(k) for j in range(i + 1, k)]
        )
        for i, j in idx:
            pair = [distinct[i], distinct[j]]
            out.append((prompt, pair, None, {**origin, "responses": [responses.index(r) for r in pair]}))
    if skipped:
        log.warning("create_campaign: skipped %d item(s) with fewer than two distinct responses", skipped)
    if not out:
        raise ValueError("no items to label: every item has fewer than two distinct responses (or items is empty)")
    return out


def _canonical_label(c: Campaign, a: Assignment, answer: Mapping[str, Any]) -> dict[str, Any]:
    """A rater's answer in display terms -> the label's canonical columns (raises ValueError naming the field)."""
    if not isinstance(answer, Mapping):
        raise ValueError("label must be a JSON object")
    order = list(a.display_order)
    reason = answer.get("reason") or ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ValueError(f'field "reason" must be a string of at most {MAX_REASON} characters')
    seconds = answer.get("seconds")
    if seconds is not None:
        try:
            ok = not isinstance(seconds, bool) and isinstance(seconds, (int, float)) and math.isfinite(seconds)
        except OverflowError:  # an integer beyond float range
            ok = False
        if not ok:
            raise ValueError(f'field "seconds" must be a finite number, got {str(seconds)[:40]}')
        seconds = max(0.0, float(seconds))
    base = {"reason": reason, "seconds": seconds}
    if c.kind == "ranking":
        shown = answer.get("order")
        k = len(order)
        if (
            not isinstance(shown, list)
            or any(isinstance(p, bool) or not isinstance(p, int) for p in shown)
            or sorted(shown) != list(range(k))
        ):
            raise ValueError(f'field "order" must list the {k} displayed positions 0..{k - 1} once each, best first')
        ranks = [0] * k
        for rank, position in enumerate(shown, start=1):
            ranks[order[position]] = rank  # position p shows response order[p]
        return {**base, "ranks": ranks, "dimensions": {}, "shown": {"order": shown}}

    def canonical(value: Any, field: str) -> str:
        if value not in DISPLAY_CHOICES:
            raise ValueError(f'field "{field}" must be "A", "B" or "tie", got {value!r}')
        return "tie" if value == "tie" else str(order["AB".index(value)])

    shown_choice = answer.get("choice")
    choice = canonical(shown_choice, "choice")
    strength = answer.get("strength")
    if choice == "tie":
        strength = 0  # a tie has no margin
    elif c.strength_scale == 1 and strength is None:
        strength = 1
    elif isinstance(strength, bool) or not isinstance(strength, int) or not 1 <= strength <= c.strength_scale:
        raise ValueError(f'field "strength" must be an integer in [1, {c.strength_scale}], got {strength!r}')
    dims_in = answer.get("dimensions") or {}
    if not isinstance(dims_in, Mapping):
        raise ValueError('field "dimensions" must be an object {dimension: "A" | "B" | "tie"}')
    unknown = sorted(set(dims_in) - set(c.dimensions))
    if unknown:
        raise ValueError(f'field "dimensions": unknown dimension {unknown[0]!r} (campaign has {list(c.dimensions)})')
    dims = {}
    for d in c.dimensions:
        if d not in dims_in:
            raise ValueError(f'field "dimensions": missing an answer for {d!r}')
        dims[d] = canonical(dims_in[d], f"dimensions.{d}")
    shown = {"choice": shown_choice, "strength": strength, "dimensions": {d: dims_in[d] for d in c.dimensions}}
    return {**base, "choice": choice, "strength": strength, "dimensions": dims, "shown": shown}


def _display_label(label: Label) -> dict[str, Any]:
    """A stored label as its rater gave it (display terms: what the rater may see again)."""
    return {**dict(label.shown or {}), "reason": label.reason}


def _pairwise_rows(
    item: Item, labs: list[dict[str, Any]], adjudication: str, dimension: str | None, dims: Sequence[str] = ()
) -> list[dict[str, Any]]:
    def row(
        choice: str, strength: float | None, rater: str, confidence: float, per_dim: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        first = 1 if choice == "1" else 0
        out = {
            "prompt": item.prompt,
            "chosen": item.responses[first],
            "rejected": item.responses[1 - first],
            "tie": choice == "tie",
        }
        if strength is not None:
            out["strength"] = float(strength)
        out.update(rater=rater, confidence=float(confidence))
        if per_dim:  # each dimension's winner, relative to this row's chosen / rejected
            out["dimensions"] = {
                d: "tie" if c == "tie" else "chosen" if int(c) == first else "rejected" for d, c in per_dim.items()
            }
        return out

    def dim_votes(d: str) -> list[tuple[str, float]]:
        return [(lab["dimensions"][d], 0.0 if lab["dimensions"][d] == "tie" else 1.0) for lab in labs]

    def pick(lab: dict[str, Any]) -> tuple[str, float]:
        if dimension is None:
            return lab["choice"], float(lab["strength"])
        choice = lab["dimensions"][dimension]
        return choice, 0.0 if choice == "tie" else 1.0  # adjudication needs a magnitude; none was collected

    if adjudication == "none":
        return [
            row(
                pick(lab)[0],
                None if dimension else pick(lab)[1],
                lab["rater"],
                1.0,
                {d: lab["dimensions"][d] for d in dims},
            )
            for lab in labs
        ]
    votes = [pick(lab) for lab in labs]
    choice, strength, _flag = adjudicate(votes, adjudication)
    share = sum(v[0] == choice for v in votes) / len(votes)
    per_dim = {d: adjudicate(dim_votes(d), adjudication)[0] for d in dims}
    return [row(choice, None if dimension else strength, "adjudicated", share, per_dim)]


def _ranking_rows(item: Item, labs: list[dict[str, Any]], adjudication: str) -> list[dict[str, Any]]:
    if adjudication == "none":
        return [
            {
                "prompt": item.prompt,
                "responses": list(item.responses),
                "ranks": list(lab["ranks"]),
                "rater": lab["rater"],
            }
            for lab in labs
        ]
    ranks, agree, _flag = adjudicate_ranking([lab["ranks"] for lab in labs], adjudication)
    return [
        {
            "prompt": item.prompt,
            "responses": list(item.responses),
            "ranks": ranks,
            "rater": "adjudicated",
            "confidence": agree,
        }
    ]


def _report(labels: list[dict[str, Any]], gold: Mapping[str, str] | None) -> dict[str, Any]:
    """agreement.quality_report, with every rater listed even when there is too little overlap to compute kappas."""
    if not labels:
        return {"cohen": {}, "fleiss": None, "krippendorff": None, "raters": {}}
    report = dict(quality_report(labels, gold or None))
    counts = Counter(lab["rater"] for lab in labels)
    raters = dict(report.get("raters") or {})
    for name, n in counts.items():
        raters.setdefault(name, {"n": n, "majority_agreement": None, "gold_agreement": None})
    report["raters"] = raters
    return report
