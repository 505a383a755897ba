"""Retention policies and the plan of which versions they keep: a pure function of (versions,
aliases, alias history, holds, policy, now), so that every decision can be shown and tested.

A version is kept when any rule keeps it, and each rule that keeps it is named: it is among the
newest `keep_last`; it is younger than `keep_within`; an alias points at it; it was demoted (an
alias moved away from it) less than `keep_demoted_for` ago; it is under legal hold. A policy with
no rule keeps everything (nothing expires until a policy says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from registry.errors import InvalidInputError

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# How long gc leaves an object no version needs any more (readers of a version that just
# expired finish first).
DEFAULT_GRACE = "24h"


def parse_duration(text: str) -> timedelta:
    """`30s`, `15m`, `12h`, `90d`, `2w` -> a timedelta; InvalidInputError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInputError(
            f"invalid duration {text!r}",
            hint="a number and a unit (s, m, h, d or w): 30s, 15m, 12h, 90d, 2w",
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_within: timedelta | None = None
    keep_demoted_for: timedelta | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and not 1 <= self.keep_last <= 1_000_000:
            raise InvalidInputError("keep-last must be at least 1")
        for name, value in (
            ("keep-within", self.keep_within),
            ("keep-demoted-for", self.keep_demoted_for),
        ):
            if value is not None and value <= timedelta(0):
                raise InvalidInputError(f"{name} must be positive")

    @property
    def empty(self) -> bool:
        return self.keep_last is None and self.keep_within is None and self.keep_demoted_for is None

    def describe(self) -> str:
        if self.empty:
            return "keep everything (no rule)"
        parts = []
        if self.keep_last is not None:
            parts.append(f"keep the last {self.keep_last}")
        if self.keep_within is not None:
            parts.append(f"keep within {format_duration(self.keep_within)}")
        if self.keep_demoted_for is not None:
            parts.append(f"keep demoted for {format_duration(self.keep_demoted_for)}")
        return ", ".join(parts) + "; aliased and held versions always"


@dataclass(frozen=True)
class VersionFacts:
    number: int
    created_at: datetime


@dataclass(frozen=True)
class Decision:
    """Whether a version is kept and why. A kept version is kept at least `until` (the latest
    date a dated rule gives: keep-within, keep-demoted-for, the lock minimum) and, when
    `open_ended`, for as long as an undated rule (keep-last, an alias, a hold) holds."""

    number: int
    keep: bool
    reasons: tuple[str, ...]
    until: datetime | None = None
    open_ended: bool = False


def last_demotions(
    moves: Iterable[tuple[int | None, int, datetime]],
) -> dict[int, datetime]:
    """From alias moves (previous, new, when), when each version last stopped being where an
    alias pointed."""
    demoted: dict[int, datetime] = {}
    for previous, new, when in moves:
        if previous is not None and previous != new:
            demoted[previous] = max(when, demoted.get(previous, when))
    return demoted


def plan(
    versions: Sequence[VersionFacts],
    *,
    policy: Policy,
    aliased: Mapping[int, Sequence[str]],
    demoted: Mapping[int, datetime],
    held: Iterable[int],
    now: datetime,
    locked_for: timedelta | None = None,
    ranks: Mapping[int, int] | None = None,
) -> list[Decision]:
    """Which versions the policy keeps and why, newest first. `locked_for` is the store's
    Object Lock minimum: nothing younger can be deleted, whatever the policy says. `ranks`
    (number -> how many live versions are newer) plans a few of a model's versions without
    the rest; by default `versions` are all of them and ranked among themselves."""
    held_set = set(held)
    ordered = sorted(versions, key=lambda v: v.number, reverse=True)
    # Said once, not once per version: a model may have thousands.
    within = None if policy.keep_within is None else format_duration(policy.keep_within)
    window_text = (
        None if policy.keep_demoted_for is None else format_duration(policy.keep_demoted_for)
    )
    locked_text = None if locked_for is None else format_duration(locked_for)
    decisions = []
    for position, version in enumerate(ordered):
        rank = position if ranks is None else ranks[version.number]
        reasons: list[str] = []
        dated: list[datetime] = []
        open_ended = False
        if policy.empty:
            # Kept, but no promise to extend locks for: the write-time lock is all it gets,
            # so an admin's `delete` can still take it once that lapses.
            reasons.append("no retention rule")
        if policy.keep_last is not None and rank < policy.keep_last:
            reasons.append(f"among the last {policy.keep_last}")
            open_ended = True
        if policy.keep_within is not None and now - version.created_at < policy.keep_within:
            reasons.append(f"younger than {within}")
            dated.append(version.created_at + policy.keep_within)
        for alias in aliased.get(version.number, ()):
            reasons.append(f"alias {alias}")
            open_ended = True
        window = policy.keep_demoted_for
        when = demoted.get(version.number)
        if window is not None and when is not None and now - when < window:
            reasons.append(f"demoted less than {window_text} ago")
            dated.append(when + window)
        if version.number in held_set:
            reasons.append("legal hold")
            open_ended = True
        if locked_for is not None and now - version.created_at < locked_for:
            reasons.append(f"object lock minimum {locked_text}")
            dated.append(version.created_at + locked_for)
        decisions.append(
            Decision(
                version.number,
                bool(reasons),
                tuple(reasons),
                max(dated) if dated else None,
                open_ended,
            )
        )
    return decisions
