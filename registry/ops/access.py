"""Who may do what: the roles, and the role each operation needs. The one rule for every
caller: operations enforce it through their `Context`, and the REST API's guards ask the same
table before they look anything up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from registry.errors import InvalidInputError, PermissionDeniedError
from registry.roles import ADMIN, PROMOTER, PUSHER, READER, ROLES

if TYPE_CHECKING:
    from registry.ops.context import Context

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Permission:
    role: str  # the least role that may
    action: str  # what is refused, as the refusal says it ("may not ...")


PERMISSIONS: dict[str, Permission] = {
    # reading
    "read": Permission(READER, "read models"),
    "pull": Permission(READER, "pull a version"),
    "verify": Permission(READER, "verify a version"),
    "load": Permission(READER, "load a version"),
    "scrub": Permission(READER, "scrub the stores"),
    "drill": Permission(READER, "run a restore drill"),
    "regions": Permission(READER, "check the regions"),
    "journal-status": Permission(READER, "read the journal's state"),
    "read-sealed": Permission(READER, "read sealed ciphertext"),
    "key-broker": Permission(READER, "use the key broker"),
    "status": Permission(READER, "read the service's status"),
    "permissions": Permission(READER, "ask what its role may do"),
    # writing versions and moving aliases
    "push": Permission(PUSHER, "push a version"),
    "promote": Permission(PUSHER, "promote"),
    "rollback": Permission(PUSHER, "roll back"),
    "protect": Permission(PROMOTER, "protect or unprotect an alias"),
    "tag": Permission(PROMOTER, "add or remove tags"),
    # administration
    "audit": Permission(ADMIN, "read the audit trail"),
    "hold": Permission(ADMIN, "place or release legal holds"),
    "retention": Permission(ADMIN, "change retention"),
    "policy": Permission(ADMIN, "change signer policies"),
    "delete": Permission(ADMIN, "delete a version"),
    "gc": Permission(ADMIN, "collect garbage"),
    "replicate": Permission(ADMIN, "replicate between regions"),
    "create-token": Permission(ADMIN, "create API tokens"),
    "list-tokens": Permission(ADMIN, "list API tokens"),
    "revoke-token": Permission(ADMIN, "revoke API tokens"),
    "webhooks": Permission(ADMIN, "add a webhook"),
    "deliver-events": Permission(ADMIN, "deliver events"),
    "journal-epoch": Permission(ADMIN, "start a journal epoch"),
    "rotate-keys": Permission(ADMIN, "rotate keys"),
    "signers": Permission(ADMIN, "change the trusted signers"),
    # The journal holds committed changes only: copying it out is every writer's duty.
    "drain-journal": Permission(READER, "copy the journal out"),
    # A server process's limit counts: every process of a fleet swaps its own, whoever runs it.
    "share-limits": Permission(READER, "share the server fleet's limit counts"),
    # The catalog, the regions' stores and the keys themselves, under every rule above.
    "internals": Permission(ADMIN, "reach the catalog, stores or keys directly"),
}


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}", hint=f"one of {', '.join(ROLES)}")
    return role


def allows(role: str, operation: str) -> bool:
    """Whether `role` may do `operation` (a key of PERMISSIONS)."""
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[operation].role)


def check(role: str, operation: str) -> None:
    """Raise PermissionDeniedError unless `role` may do `operation`."""
    if not allows(role, operation):
        permission = PERMISSIONS[operation]
        raise PermissionDeniedError(
            f"the {role} role may not {permission.action}",
            hint=f"it needs the {permission.role} role",
        )


def lower(role: str, other: str) -> str:
    """The lesser of two roles."""
    return min(role, other, key=ROLES.index)


def may_move_protected(role: str) -> bool:
    """A protected alias moves only for the promoter and admin roles."""
    return allows(role, "protect")


def requires(
    operation: str,
) -> Callable[[Callable[Concatenate[Context, P], R]], Callable[Concatenate[Context, P], R]]:
    """Declare the role an operation needs: checked before it runs, for every caller."""

    def declare(
        function: Callable[Concatenate[Context, P], R],
    ) -> Callable[Concatenate[Context, P], R]:
        def checked(context: Context, /, *args: P.args, **kwargs: P.kwargs) -> R:
            check(context.role, operation)
            with context.counting_unwraps():
                return function(context, *args, **kwargs)

        checked.__name__ = function.__name__
        checked.__qualname__ = function.__qualname__
        checked.__doc__ = function.__doc__
        checked.required = operation  # type: ignore[attr-defined]
        return checked

    if operation not in PERMISSIONS:
        raise KeyError(operation)
    return declare
