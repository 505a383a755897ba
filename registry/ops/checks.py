"""Small checks every operation shares: free text (reasons, messages) within its limit and free
of NULs, and the progress bar of a caller that asked for none.
"""

from __future__ import annotations

from registry.errors import (
    InvalidInputError,
)


class NoProgress:
    def begin(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


def check_text(what: str, text: str, *, limit: int) -> None:
    if len(text) > limit or "\x00" in text:
        raise InvalidInputError(f"{what} is longer than {limit} characters or holds a NUL")
