"""The pages that read: the models (filtered as you type, paged), a model (its versions paged,
newest first, with aliases, holds, retention and copies per region; its aliases' moves; its
policy), a version (files, tensors, config, signature, tags, snippets, audit entries), the diff
of two versions, a search of the versions, and the audit trail with the check of its chain. Each
asks the facade what the REST API would, as the signed-in token.
"""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Lock
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import FromPath, FromQuery, QueryParameter

from registry.api.common import note_read, parse_time
from registry.api.guards import REGISTRY_SUBJECT
from registry.api.ui.render import page
from registry.api.ui.session import Viewer, notice_signature, viewer
from registry.errors import InvalidInputError, NotFoundError, RegistryError
from registry.manifest import Manifest
from registry.reports import ConfigTooDeepError, VersionDetails, parse_config

PAGE_SIZE = 50
TENSOR_ROWS = 500
_VERSION_PATH = re.compile(r"(.+)/versions/([0-9]{1,9})")
_CONFIG_LIMIT = 1024 * 1024
_CARD_LIMIT = 256 * 1024


@dataclass(frozen=True)
class TensorRow:
    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    parameters: int


class _SmallFiles:
    """Small files (config.json, README.md) by digest: content-addressed, so never stale; read
    once per server process, not once per page view. Bounded."""

    def __init__(self, capacity: int = 512) -> None:
        self._lock = Lock()
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity

    def get(self, view: Viewer, ref: str, path: str, digest: str) -> bytes:
        with self._lock:
            found = self._items.get(digest)
            if found is not None:
                self._items.move_to_end(digest)
                return found
        data = view.view.read_small_file(ref, path)
        with self._lock:
            self._items[digest] = data
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return data


SMALL_FILES = _SmallFiles()


def _page_number(text: str | None) -> int:
    if text is None or text == "":
        return 1
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10_000_000:
        raise InvalidInputError(f"invalid page {text!r}", hint="a page number from 1")
    return int(text)


def _number(text: str | None, what: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise InvalidInputError(f"invalid {what} {text!r}", hint="a whole number")
    return int(text)


class PagesController(Controller):
    path = "/"

    @get("/", sync_to_thread=True, name="ui-models")
    def models(
        self,
        request: Request[Any, Any, Any],
        q: FromQuery[str] = "",
        page_number: Annotated[str | None, QueryParameter(name="page")] = None,
    ) -> Any:
        """The models the token may see, by name, filtered by `q`, a page at a time."""
        who = viewer(request)
        if len(q) > 200:
            raise InvalidInputError("the filter is at most 200 characters")
        listing = who.view.model_page(
            query=q, patterns=who.token.models, number=_page_number(page_number), size=PAGE_SIZE
        )
        return page("models.html", viewer=who, listing=listing, q=q, title="Models")

    @get("/models/{rest:path}", sync_to_thread=True, name="ui-model")
    def model(
        self,
        request: Request[Any, Any, Any],
        rest: FromPath[str],
        page_number: Annotated[str | None, QueryParameter(name="page")] = None,
        expired: FromQuery[bool] = False,
        t: FromQuery[str] = "",
        a: FromQuery[str | None] = None,
        b: FromQuery[str | None] = None,
        notice: FromQuery[str] = "",
        sig: FromQuery[str] = "",
    ) -> Any:
        """A model, one of its versions (`.../versions/N`) or a diff (`.../diff`)."""
        who = viewer(request)
        path = rest.strip("/")
        if path.endswith("/diff") and not _is_model(who, path):
            return _diff(request, who, path[: -len("/diff")], a, b)
        found = _VERSION_PATH.fullmatch(path)
        if found is not None and not _is_model(who, path):
            return _version(request, who, found[1], int(found[2]), t)
        who.check_model(path)
        overview = who.view.model_overview(
            path, number=_page_number(page_number), size=PAGE_SIZE, expired=expired
        )
        return page(
            "model.html",
            viewer=who,
            model=overview,
            expired=expired,
            notice=notice if notice and notice_signature(who.csrf, notice) == sig else "",
            title=path,
            may_promote=who.may("promote"),
            may_rollback=who.may("rollback"),
            may_hold=who.may("hold"),
        )

    @get("/search", sync_to_thread=True, name="ui-search")
    def search(self, request: Request[Any, Any, Any], q: FromQuery[str] = "") -> Any:
        """The newest versions whose model name, tags, metadata or message match `q` (the
        header's search box), among the models the token may read: a bounded list, newest
        first, each with what it matched."""
        who = viewer(request)
        result = None
        if q.strip():
            result = who.view.search(q, patterns=who.token.models, limit=PAGE_SIZE)
        return page(
            "search.html",
            viewer=who,
            q=q,
            search_q=q,
            result=result,
            limit=PAGE_SIZE,
            title="Search",
        )

    @get("/audit", sync_to_thread=True, name="ui-audit")
    def audit(
        self,
        request: Request[Any, Any, Any],
        model: FromQuery[str] = "",
        actor: FromQuery[str] = "",
        action: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        before: FromQuery[str | None] = None,
        verify: FromQuery[bool] = False,
    ) -> Any:
        """The audit trail (admin), newest first, filtered, a page at a time; with `verify`,
        the check of its hash chain against the stores' journals too."""
        who = viewer(request, "audit")
        for text in (model, actor, action):
            if len(text) > 256:
                raise InvalidInputError("a filter is at most 256 characters")
        if model:
            who.check_model(model)
        filters = {"model": model, "actor": actor, "action": action, "since": since, "until": until}
        if model in ("", REGISTRY_SUBJECT) and not who.everything:
            # As the API: the whole trail, and the registry's own entries, need a token for
            # every model.
            return page(
                "audit.html",
                viewer=who,
                filters=filters,
                events=None,
                older=None,
                before=None,
                verification=None,
                title="Audit trail",
            )
        listing = who.view.audit_page(
            subjects=[model] if model else None,
            actor=actor or None,
            action=action or None,
            since=_day_or_time(since),
            until=_day_or_time(until, end=True),
            before=_number(before, "position"),
            size=PAGE_SIZE,
        )
        verification = who.view.verify_audit() if verify and who.everything else None
        return page(
            "audit.html",
            viewer=who,
            filters=filters,
            events=listing.events,
            older=listing.older,
            before=before,
            verification=verification,
            title="Audit trail",
        )


def _is_model(who: Viewer, path: str) -> bool:
    """Whether `path` is itself the name of a model the token sees (a model may be named
    `org/diff`; its page wins over the diff of `org`)."""
    try:
        who.check_model(path)
        who.view.model_summary(path)
    except RegistryError:
        return False
    return True


def _day_or_time(text: str, *, end: bool = False) -> datetime | None:
    """A filter's time: a date (`2026-12-01`: the whole day, UTC) or an ISO time with a zone."""
    if not text:
        return None
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        try:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise InvalidInputError(f"invalid date {text!r}", hint="YYYY-MM-DD") from None
        if end:
            from datetime import timedelta

            try:
                return day + timedelta(days=1)
            except OverflowError:
                return None
        return day
    return parse_time(text)


def _version(request: Request[Any, Any, Any], who: Viewer, name: str, number: int, t: str) -> Any:
    who.check_model(name)
    ref = f"{name}@{number}"
    details = who.view.show(ref)
    note_read(request, who.token, name)
    row = who.view.version_row(ref)
    if len(t) > 200:
        raise InvalidInputError("the tensor filter is at most 200 characters")
    tensors = _tensors(details.manifest)
    needle = t.strip().lower()
    matching = [tensor for tensor in tensors if needle in tensor.name.lower()]
    by_dtype = Counter[str]()
    for tensor in tensors:
        by_dtype[tensor.dtype] += tensor.parameters
    events = None
    if who.may("audit"):
        events = who.view.audit_page(subjects=[name], version=number, size=20).events
    return page(
        "version.html",
        viewer=who,
        details=details,
        row=row,
        tensors=matching[:TENSOR_ROWS],
        tensor_matches=len(matching),
        tensor_total=len(tensors),
        by_dtype=sorted(by_dtype.items(), key=lambda item: -item[1]),
        t=t,
        config=_config_summary(who, details),
        card=_card(who, details),
        events=events,
        title=ref,
        may_promote=who.may("promote"),
        may_hold=who.may("hold"),
    )


def _tensors(manifest: Manifest) -> list[TensorRow]:
    rows = []
    for entry in manifest.files:
        if entry.safetensors is None:
            continue
        for tensor in entry.safetensors.tensors:
            rows.append(
                TensorRow(entry.path, tensor.name, tensor.dtype, tensor.shape, tensor.numel)
            )
    return sorted(rows, key=lambda r: r.name)


_CONFIG_FIELDS = (
    ("Architecture", ("architectures", "model_type")),
    ("Model type", ("model_type",)),
    ("Layers", ("num_hidden_layers", "n_layer", "num_layers")),
    ("Hidden size", ("hidden_size", "n_embd", "d_model")),
    ("Attention heads", ("num_attention_heads", "n_head")),
    ("Key/value heads", ("num_key_value_heads",)),
    ("Vocabulary", ("vocab_size",)),
    ("Context length", ("max_position_embeddings", "n_positions", "seq_length")),
    ("Weights dtype", ("torch_dtype", "dtype")),
)


def _config_summary(who: Viewer, details: VersionDetails) -> list[tuple[str, str]] | None:
    """The fields of config.json a reader looks for first (a multimodal config's text part
    when the top level lacks them), or None when the version has no readable config."""
    entry = next((f for f in details.version.files if f.path == "config.json"), None)
    if entry is None or entry.size > _CONFIG_LIMIT:
        return None
    raw = SMALL_FILES.get(who, details.version.ref, entry.path, entry.digest)
    try:
        config = parse_config(raw)
    except ConfigTooDeepError:
        return [("config.json", "nested too deeply to show")]
    except ValueError:  # UnicodeDecodeError is one
        return [("config.json", "not valid JSON")]
    if not isinstance(config, dict):
        return [("config.json", "not a JSON object")]
    nested = config.get("text_config")
    found = []
    for label, keys in _CONFIG_FIELDS:
        for source in (config, nested if isinstance(nested, dict) else {}):
            value = next((source[k] for k in keys if k in source), None)
            if value is not None:
                if isinstance(value, list):
                    value = ", ".join(str(v) for v in value)
                found.append((label, str(value)[:200]))
                break
    return found


def _card(who: Viewer, details: VersionDetails) -> str | None:
    """The version's model card (README.md) as text, or None."""
    entry = next((f for f in details.version.files if f.path.lower() == "readme.md"), None)
    if entry is None or entry.size > _CARD_LIMIT:
        return None
    return SMALL_FILES.get(who, details.version.ref, entry.path, entry.digest).decode(
        "utf-8", errors="replace"
    )


def _earlier(who: Viewer, name: str, number: int) -> int:
    """The live version just before `number` (tombstones skipped)."""
    for candidate in range(number - 1, max(number - 50, 0), -1):
        try:
            return who.view.resolve(f"{name}@{candidate}").number
        except NotFoundError:
            continue
    raise NotFoundError(
        f"{name}@{number} has no earlier live version close by to compare with",
        hint="choose the two versions: ?a=N&b=M",
    )


def _diff(
    request: Request[Any, Any, Any], who: Viewer, name: str, a: str | None, b: str | None
) -> Any:
    who.check_model(name)
    newer = _number(b, "version")
    older = _number(a, "version")
    if newer is None:
        newer = who.view.resolve(name).number
    if older is None:
        older = _earlier(who, name, newer)
    change = who.view.diff(f"{name}@{older}", f"{name}@{newer}")
    note_read(request, who.token, name)
    return page(
        "diff.html", viewer=who, diff=change, name=name, rows=TENSOR_ROWS, title=f"{name}: diff"
    )
