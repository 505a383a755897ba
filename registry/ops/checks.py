"""The check every operation applies to free text (reasons, messages, names): within its
limit and free of NULs.
"""

from __future__ import annotations

from registry.errors import (
    InvalidInputError,
)


def check_text(what: str, text: str, *, limit: int) -> None:
    if len(text) > limit or "\x00" in text:
        raise InvalidInputError(f"{what} is longer than {limit} characters or holds a NUL")
