"""The base of the wire models: keyword-only msgspec structs, times and durations as text, and
`dump`/`load` between models and JSON-ready builtins."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec

from registry import retention
from registry.errors import RegistryError

M = TypeVar("M", bound=msgspec.Struct)

# An ISO 8601 time with a zone. `extra` is how Litestar's schema generation takes the format.
Time = Annotated[
    str,
    msgspec.Meta(
        description="ISO 8601 time with a zone",
        extra_json_schema={"extra": {"format": "date-time"}},
    ),
]
Duration = Annotated[str, msgspec.Meta(description="a duration: 30s, 15m, 12h, 90d, 2w")]


def dump(model: msgspec.Struct | Sequence[msgspec.Struct]) -> Any:
    """A model (or a list of them) as JSON-ready builtins."""
    return msgspec.to_builtins(model)


def load(kind: type[M], data: Any) -> M:
    """JSON (parsed) checked against a model; a mismatch is a RegistryError."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as error:
        raise RegistryError(
            f"unexpected answer from the registry server ({kind.__name__}): {error}",
            hint="is the server the same version of model-registry?",
        ) from None


def load_list(kind: type[M], data: Any) -> list[M]:
    """A JSON list checked against a model."""
    if not isinstance(data, list):
        raise RegistryError(f"unexpected answer from the registry server: not a list of {kind}")
    return [load(kind, item) for item in data]


def iso(moment: datetime) -> str:
    return moment.isoformat()


def maybe_iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def maybe_parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def duration_text(value: timedelta | None) -> str | None:
    return None if value is None else retention.format_duration(value)


def maybe_parse_duration(text: str | None) -> timedelta | None:
    return None if text is None else retention.parse_duration(text)


class Wire(msgspec.Struct, kw_only=True):
    """Base of the models (keyword-only fields, so a model may extend another)."""
