"""Finding versions by what describes them, and reading a version's metadata: a search over model
names, tags, metadata (`version_meta`: a key and value exactly, or a word in either) and version
messages, newest first (the last committed first), each hit with what it matched.

Every query is bounded by its limit: an exact `key=value` is a lookup of the metadata's (key,
value) index; a model's name is a lookup of its newest version; a word in tags, metadata or
messages, which no index on either database can find inside a text, is looked for first among
the newest versions one by one (stopping at the limit: a common word costs a few hundred
lookups), and only if that finds too few, in one pass over each table for the older ones. What
each hit shown matched is then read for those hits alone. docs/benchmarks.md ("Search") has the
timings on 100,000 versions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from registry.catalog.models import Model, Tag, Version, VersionMeta
from registry.catalog.parts import CatalogPart, version_record
from registry.records import SearchHit, SearchMatch

# A name list longer than this is turned into model ids a chunk at a time (bound parameters).
_NAMES_PER_QUERY = 5000
SNIPPET = 80  # characters of a message shown around the word it matched
# A word is first looked for among this many of the newest versions (see `_described`).
RECENT = 5000

Contains = Callable[[Any, str], ColumnElement[bool]]


class SearchPart(CatalogPart):
    """Searching versions; a version's metadata."""

    def search(
        self,
        *,
        word: str | None = None,
        key: str | None = None,
        value: str | None = None,
        names: Sequence[str] | None = None,
        limit: int,
    ) -> tuple[list[SearchHit], bool]:
        """The newest `limit` live versions (the last pushed first) that match, and whether
        more do: with `key`, those whose metadata holds `key` = `value` exactly; with `word`,
        those whose tags, metadata keys or values or message contain it (case-insensitive),
        and the newest version of each model whose name contains it. Only models in `names`
        when given."""
        with self._read() as session:
            model_ids = None if names is None else _model_ids(session, names)
            if model_ids == []:
                return [], False
            contains = _contains(session)
            named: dict[int, str] = {}
            if key is not None:
                found = set(_exact(session, key, value or "", model_ids, limit))
            else:
                assert word is not None
                found = set(_described(session, word, contains, model_ids, limit))
                named = _named(session, word, contains, model_ids, limit)
                found.update(named)
            chosen = sorted(found, reverse=True)[:limit]
            rows = {
                v.id: v
                for v in session.scalars(
                    select(Version)
                    .where(Version.id.in_(chosen))
                    .options(selectinload(Version.files), selectinload(Version.model))
                )
            }
            if key is not None:
                reasons = {i: [SearchMatch("meta", value or "", key)] for i in chosen}
            else:
                assert word is not None
                reasons = _reasons(session, chosen, word, contains, rows)
                for version_id in chosen:
                    if version_id in named:
                        reasons[version_id].insert(0, SearchMatch("name", named[version_id]))
            # A version row is never deleted (an expired one stays a tombstone): all are there.
            hits = [SearchHit(version_record(rows[i]), tuple(reasons[i])) for i in chosen]
        return hits, len(found) > limit

    def version_meta(self, name: str, number: int) -> dict[str, str]:
        """The metadata of version `number` of model `name` (key -> value; none: empty)."""
        with self._read() as session:
            rows = session.execute(
                select(VersionMeta.key, VersionMeta.value)
                .join(Version, Version.id == VersionMeta.version_id)
                .join(Model, Model.id == Version.model_id)
                .where(Model.name == name, Version.number == number)
                .order_by(VersionMeta.key)
            )
            return {key: value for key, value in rows}


def _contains(session: Session) -> Contains:
    """`column` contains `word`, case-insensitive, `%` and `_` taken literally: SQLite's LIKE
    ignores the case of ASCII letters by itself (lower() would cost a call per row);
    PostgreSQL's LIKE does not, its ILIKE does."""
    if session.get_bind().dialect.name == "postgresql":
        return lambda column, word: column.icontains(word, autoescape=True)
    return lambda column, word: column.contains(word, autoescape=True)


def _model_ids(session: Session, names: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(names), _NAMES_PER_QUERY):
        chunk = list(names[start : start + _NAMES_PER_QUERY])
        ids += session.scalars(select(Model.id).where(Model.name.in_(chunk)))
    return ids


def _newest(
    session: Session, where: ColumnElement[bool], model_ids: list[int] | None, count: int
) -> list[int]:
    """The ids of the newest `count` live versions that satisfy `where` (in `model_ids`),
    newest first. Versions are numbered in the order they were committed, under the catalog's
    one write lock, so the newest is the highest id: walking the primary key backwards, both
    databases stop at the `count`th match."""
    query = select(Version.id).where(Version.expired_at.is_(None), where)
    if model_ids is not None:
        query = query.where(Version.model_id.in_(model_ids))
    return list(session.scalars(query.order_by(Version.id.desc()).limit(count)))


def _exact(
    session: Session, key: str, value: str, model_ids: list[int] | None, limit: int
) -> list[int]:
    """The newest `limit + 1` live versions whose metadata holds `key` = `value`: the
    (key, value) index finds them. A key as `push --meta` named it (`lr`) is the stored
    `meta.lr` too, and a base model named without its number (`org/llama`) is any of its
    versions (`org/llama@N`)."""
    keys = [key] if "." in key or key == "base_model" else [key, f"meta.{key}"]
    matching = (VersionMeta.key.in_(keys)) & (VersionMeta.value == value)
    if key == "base_model" and "@" not in value:
        matching = matching | (
            (VersionMeta.key == key) & VersionMeta.value.startswith(f"{value}@", autoescape=True)
        )
    described = select(VersionMeta.version_id).where(matching)
    return _newest(session, Version.id.in_(described), model_ids, limit + 1)


def _described(
    session: Session, word: str, contains: Contains, model_ids: list[int] | None, limit: int
) -> list[int]:
    """The newest `limit + 1` live versions whose tags, metadata or message contain `word`.

    First among the newest RECENT versions (of the models in `model_ids`), newest first, each
    version's own tags and metadata looked up by its key: a word that many versions hold is
    found there and the walk stops at the `limit + 1`th, and a search within a few models
    looks at their versions alone. What that leaves to find comes from the older versions in
    one pass over each table (the tags and metadata that match made into sets the versions'
    pass looks up), cheaper than looking up every version's rows one by one."""
    window = select(Version.id).order_by(Version.id.desc()).limit(RECENT)
    if model_ids is not None:
        window = window.where(Version.model_id.in_(model_ids))
    newest = window.subquery()
    floor, seen = session.execute(select(func.min(newest.c.id), func.count())).one()
    if not seen:
        return []
    # Scalar subqueries, not EXISTS: PostgreSQL may turn an EXISTS into a hashed set of every
    # matching row of the table (a pass over all of it); a scalar subquery it looks up per
    # version, by the version's key, so the walk can stop early.
    own_tags = (
        select(Tag.version_id)
        .where(Tag.version_id == Version.id, contains(Tag.tag, word))
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )
    own_meta = (
        select(VersionMeta.version_id)
        .where(
            VersionMeta.version_id == Version.id,
            or_(contains(VersionMeta.key, word), contains(VersionMeta.value, word)),
        )
        .limit(1)
        .scalar_subquery()
        .is_not(None)
    )
    message = contains(Version.message, word)
    recent = _newest(
        session, and_(Version.id >= floor, or_(message, own_tags, own_meta)), model_ids, limit + 1
    )
    if len(recent) > limit or seen < RECENT:
        return recent
    tagged = select(Tag.version_id).where(contains(Tag.tag, word))
    described = select(VersionMeta.version_id).where(
        or_(contains(VersionMeta.key, word), contains(VersionMeta.value, word))
    )
    older = and_(
        Version.id < floor,
        or_(message, Version.id.in_(tagged), Version.id.in_(described)),
    )
    return recent + _newest(session, older, model_ids, limit + 1 - len(recent))


def _named(
    session: Session, word: str, contains: Contains, model_ids: list[int] | None, limit: int
) -> dict[int, str]:
    """The newest live version of each model whose name contains `word` (the newest `limit +
    1` of those): version id -> the model's name. One backward step in the (model, number)
    index per model."""
    newest = (
        select(Version.id)
        .where(Version.model_id == Model.id, Version.expired_at.is_(None))
        .order_by(Version.number.desc())
        .limit(1)
        .correlate(Model)
        .scalar_subquery()
    )
    query = select(newest, Model.name).where(contains(Model.name, word))
    if model_ids is not None:
        query = query.where(Model.id.in_(model_ids))
    found = {version_id: name for version_id, name in session.execute(query) if version_id}
    return {version_id: found[version_id] for version_id in sorted(found)[::-1][: limit + 1]}


def _reasons(
    session: Session,
    chosen: Sequence[int],
    word: str,
    contains: Contains,
    rows: dict[int, Version],
) -> dict[int, list[SearchMatch]]:
    """What each of the versions `chosen` matched of `word`: tags, metadata, its message
    (asked of the database again, so the reasons follow its rules of case exactly)."""
    reasons: dict[int, list[SearchMatch]] = {version_id: [] for version_id in chosen}
    if not chosen:
        return reasons
    for version_id, tag in session.execute(
        select(Tag.version_id, Tag.tag)
        .where(Tag.version_id.in_(chosen), contains(Tag.tag, word))
        .order_by(Tag.tag)
    ):
        reasons[version_id].append(SearchMatch("tag", tag))
    for version_id, key, value in session.execute(
        select(VersionMeta.version_id, VersionMeta.key, VersionMeta.value)
        .where(
            VersionMeta.version_id.in_(chosen),
            or_(contains(VersionMeta.key, word), contains(VersionMeta.value, word)),
        )
        .order_by(VersionMeta.key)
    ):
        reasons[version_id].append(SearchMatch("meta", value, key))
    for (version_id,) in session.execute(
        select(Version.id).where(Version.id.in_(chosen), contains(Version.message, word))
    ):
        reasons[version_id].append(SearchMatch("message", snippet(rows[version_id].message, word)))
    return reasons


def snippet(message: str, word: str, *, width: int = SNIPPET) -> str:
    """The part of `message` around the first `word` in it (case-insensitive), on one line,
    at most about `width` characters, with an ellipsis where it was cut."""
    flat = " ".join(message.split())
    if len(flat) <= width:
        return flat
    at = flat.lower().find(word.lower())
    if at < 0:
        return flat[:width] + "…"
    start = max(0, min(at - (width - len(word)) // 2, len(flat) - width))
    end = start + width
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")
