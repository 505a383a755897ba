"""Object Lock: retention (mode and retain-until date) and legal holds on stored objects.

A driver that can lock objects implements `ObjectLock` beside `Driver`. The rules are the
registry's own and are checked before any request, because some stores (moto among them) accept
what a real bucket would refuse: retention is never shortened, COMPLIANCE is never downgraded to
GOVERNANCE, and a GOVERNANCE lock is bypassed only when the caller asks for it by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime

from registry.errors import InvalidInputError, RetentionError

COMPLIANCE = "COMPLIANCE"
GOVERNANCE = "GOVERNANCE"
MODES = (COMPLIANCE, GOVERNANCE)


@dataclass(frozen=True)
class Retention:
    """An object's lock: its mode and the instant until which it cannot be deleted or changed."""

    mode: str
    until: datetime

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(
                f"retention mode must be COMPLIANCE or GOVERNANCE, not {self.mode!r}"
            )
        if self.until.tzinfo is None:
            raise InvalidInputError("a retain-until date must carry a time zone")

    def active(self, now: datetime | None = None) -> bool:
        return self.until > (now or datetime.now(UTC))


def check_change(name: str, current: Retention | None, requested: Retention) -> Retention:
    """The retention to apply when `requested` is asked for over `current`; refuses shortening
    and downgrading. An earlier date than the current one is refused even for GOVERNANCE."""
    if current is None or not current.active():
        return requested
    if current.mode == COMPLIANCE and requested.mode == GOVERNANCE:
        raise RetentionError(
            f"{name}: COMPLIANCE retention cannot become GOVERNANCE",
            hint="a COMPLIANCE lock can only be extended",
        )
    if requested.until < current.until:
        raise RetentionError(
            f"{name}: retention until {current.until:%Y-%m-%d %H:%M} UTC cannot be shortened "
            f"to {requested.until:%Y-%m-%d %H:%M} UTC",
            hint="retention is only ever extended",
        )
    return requested


def check_delete(
    name: str, current: Retention | None, held: bool, *, bypass_governance: bool
) -> None:
    """Refuse to delete a held or locked object; GOVERNANCE yields only to an explicit bypass."""
    if held:
        raise RetentionError(f"{name}: under legal hold", hint="release the hold first")
    if current is None or not current.active():
        return
    if current.mode == COMPLIANCE:
        raise RetentionError(
            f"{name}: locked in COMPLIANCE mode until {current.until:%Y-%m-%d %H:%M} UTC",
            hint="nobody can delete it before then",
        )
    if not bypass_governance:
        raise RetentionError(
            f"{name}: locked in GOVERNANCE mode until {current.until:%Y-%m-%d %H:%M} UTC",
            hint="deleting it needs an explicit governance bypass by an allowed caller",
        )


class ObjectLock(ABC):
    """Retention and legal holds of a driver's objects (every method validates the name)."""

    @abstractmethod
    def retention(self, name: str, *, version_id: str | None = None) -> Retention | None:
        """The object's current retention (or that of one version), or None when it has none."""

    @abstractmethod
    def extend_retention(
        self, name: str, retention: Retention, *, version_id: str | None = None
    ) -> Retention:
        """Apply `retention` (checked with `check_change`) and return what the store reports."""

    @abstractmethod
    def minimum_lock(self) -> Retention | None:
        """The retention every write gets (the store's configured minimum from now), if any."""

    def hold_at_least(self, name: str, retention: Retention) -> Retention | None:
        """Extend the object's retention to `retention` unless it already reaches that far
        (reusing an object must never shorten nor weaken its lock)."""
        current = self.retention(name)
        if current is None or not current.active():
            return self.extend_retention(name, retention)
        mode = COMPLIANCE if COMPLIANCE in (current.mode, retention.mode) else GOVERNANCE
        until = max(current.until, retention.until)
        if mode == current.mode and until == current.until:
            return current
        # A weaker GOVERNANCE lock is raised to COMPLIANCE when COMPLIANCE is asked for.
        return self.extend_retention(name, Retention(mode, until))

    @abstractmethod
    def legal_hold(self, name: str) -> bool:
        """Whether the object is under legal hold."""

    @abstractmethod
    def set_legal_hold(self, name: str, on: bool) -> None:
        """Place or release the object's legal hold."""
