"""Search: the live versions whose model name, tags, metadata or message match a query, newest
first, each with what it matched, limited to the models a caller may see (a token's patterns)
and, when asked, to the models a pattern names.

A query is `KEY=VALUE` (metadata holding exactly that: `base_model=meta-llama/Llama-3.1-8B`,
`source.commit=…`) or a word (a tag, a metadata key or value, a model's name or a message that
contains it, whatever the case). The catalog answers both in bounded queries
(`registry.catalog.search`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from registry.errors import InvalidInputError
from registry.ops.access import requires
from registry.ops.browse import visible
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.reports import SearchResult

MAX_QUERY = 200
MAX_LIMIT = 500
DEFAULT_LIMIT = 50


@requires("read")
def search(
    ctx: Context,
    query: str,
    *,
    model: str | None = None,
    patterns: Sequence[str] = ("*",),
    limit: int = DEFAULT_LIMIT,
) -> SearchResult:
    """The newest `limit` live versions matching `query` among the models `patterns` let the
    caller see (and `model`, a name or a shell pattern, names), and whether more match."""
    text = query.strip()
    if not text:
        raise InvalidInputError(
            "nothing to search for", hint="a word, or KEY=VALUE for a version's metadata"
        )
    check_text("the search", text, limit=MAX_QUERY)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"the limit is 1 to {MAX_LIMIT} hits")
    if model is not None:
        check_text("the model pattern", model, limit=256)
        if not model.strip():
            raise InvalidInputError("an empty model pattern", hint="a name, or one like 'org/*'")
    names = None
    if model is not None or "*" not in patterns:
        names = [
            name
            for name in ctx.catalog.model_names()
            if visible(name, patterns) and (model is None or fnmatch.fnmatchcase(name, model))
        ]
    key, equals, value = text.partition("=")
    if equals:
        if not key.strip():
            raise InvalidInputError(
                f"{text!r} names no metadata key", hint="KEY=VALUE, e.g. base_model=llama-3-8b"
            )
        hits, more = ctx.catalog.search(
            key=key.strip(), value=value.strip(), names=names, limit=limit
        )
    else:
        hits, more = ctx.catalog.search(word=text, names=names, limit=limit)
    return SearchResult(text, tuple(hits), more)
