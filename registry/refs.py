"""Parse and validate model names, version references, tags and the relative paths of a version's
files.

Grammar (docs/design.md, README):

    NAME       = [ORG "/"] SEGMENT          SEGMENT = [a-z0-9][a-z0-9._-]*, no "..", <= 128 chars
    REF        = NAME                        newest version
               | NAME "@" NUMBER             version number, 1, 2, 3...
               | NAME "@blake3:" HEX{12,64}  version digest or a unique prefix of it
               | NAME ":" ALIAS              alias (production, staging, ...)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from registry.errors import InvalidInputError, InvalidReferenceError

MAX_NAME_LENGTH = 128
MIN_DIGEST_PREFIX = 12
MAX_VERSION = 2**31 - 1  # the catalog's INTEGER column
_SEGMENT = re.compile(r"[a-z0-9][a-z0-9._-]*")
_ALIAS = re.compile(r"[a-z][a-z0-9._-]{0,62}")
_TAG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_DIGEST_PREFIX = re.compile(r"[0-9a-f]{12,64}")
MAX_PATH_LENGTH = 1024
MAX_PATH_SEGMENT = 255


def validate_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise `InvalidReferenceError`."""
    if not isinstance(name, str) or not name:
        raise InvalidReferenceError("model name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(
            f"model name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    segments = name.split("/")
    if len(segments) > 2:
        raise InvalidReferenceError(f"invalid model name {name!r}: at most one '/' (org/name)")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or ".." in segment:
            raise InvalidReferenceError(
                f"invalid model name {name!r}: {segment!r} is not a lower-case "
                "[a-z0-9][a-z0-9._-]* segment"
            )
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` if it is a valid alias name (lower-case, starts with a letter)."""
    if not _ALIAS.fullmatch(alias) or ".." in alias:
        raise InvalidReferenceError(
            f"invalid alias {alias!r}: use a lower-case word such as production or staging",
            hint="aliases match [a-z][a-z0-9._-]{0,62}",
        )
    return alias


def validate_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag (lower-case letters, digits, `.`, `_`, `-`; 64 at
    most, starting with a letter or digit), else raise `InvalidInputError`."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidInputError(
            f"invalid tag {tag!r}: use lower-case letters, digits, '.', '_' and '-'",
            hint="tags match [a-z0-9][a-z0-9._-]{0,63}, e.g. eval-passed or release-2026.11",
        )
    return tag


@dataclass(frozen=True)
class Reference:
    """A parsed reference: exactly one of number, digest_prefix, alias is set, or none (newest)."""

    name: str
    number: int | None = None
    digest_prefix: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.name}@{self.number}"
        if self.digest_prefix is not None:
            return f"{self.name}@blake3:{self.digest_prefix}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name


def parse_reference(text: str) -> Reference:
    """Parse `NAME`, `NAME@N`, `NAME@blake3:PREFIX` or `NAME:ALIAS`."""
    if not isinstance(text, str) or not text:
        raise InvalidReferenceError("empty reference")
    if "@" in text:
        name, _, selector = text.partition("@")
        validate_name(name)
        if selector.startswith("blake3:"):
            prefix = selector.removeprefix("blake3:")
            if not _DIGEST_PREFIX.fullmatch(prefix):
                raise InvalidReferenceError(
                    f"invalid digest in {text!r}: give {MIN_DIGEST_PREFIX} to 64 lower-case hex "
                    "digits after blake3:"
                )
            return Reference(name, digest_prefix=prefix)
        if (
            selector.isascii()
            and selector.isdigit()
            and not selector.startswith("0")
            and len(selector) <= 10
            and int(selector) <= MAX_VERSION
        ):
            return Reference(name, number=int(selector))
        raise InvalidReferenceError(
            f"invalid version in {text!r}: expected a number (1, 2, ...) or blake3:HEX"
        )
    if ":" in text:
        name, _, alias = text.partition(":")
        return Reference(validate_name(name), alias=validate_alias(alias))
    return Reference(validate_name(text))


def validate_relative_path(path: str, *, what: str = "file path") -> str:
    """Return `path` if it is a safe relative POSIX path inside a model version, else raise.

    Refused: empty, absolute, backslashes, `.` or `..` segments, empty segments, control or
    non-printable characters, segments over 255 bytes, paths over 1024 characters.
    """
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"empty {what}")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidInputError(f"{what} {path[:64]!r}... is longer than {MAX_PATH_LENGTH}")
    if path.startswith("/") or "\\" in path:
        raise InvalidInputError(f"{what} {path!r} must be relative and use '/' separators")
    for char in path:
        category = unicodedata.category(char)
        if category.startswith("C") or category in ("Zl", "Zp"):
            raise InvalidInputError(f"{what} {path!r} contains a control character")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidInputError(f"{what} {path!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_PATH_SEGMENT:
            raise InvalidInputError(f"{what} {path!r} has a segment over {MAX_PATH_SEGMENT} bytes")
    return path
