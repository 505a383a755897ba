"""What changes something: sign-in and sign-out, and the moves a reviewer makes (promote, roll
back, place or release a legal hold). Every change is two steps, each a POST carrying the
session's CSRF token: the first shows what would happen (nothing moves), the second, confirmed,
makes the change through the same facade call as the CLI's, so the same role rules, the same
audit entry and the same events follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, QueryParameter
from litestar.response import Redirect

from registry.api.common import client_of, security_event, state_of
from registry.api.ui.render import model_url, page
from registry.api.ui.session import (
    COOKIE,
    Viewer,
    check_csrf,
    check_same_origin,
    clear_cookie,
    notice_signature,
    safe_next,
    session_cookie,
    viewer,
)
from registry.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from registry.refs import validate_alias

FORM = Body(media_type=RequestEncodingType.URL_ENCODED)
ACTIONS = {
    # action: (the operation the role must allow, what it needs besides the model)
    "promote": ("promote", ("version", "alias")),
    "rollback": ("rollback", ("alias",)),
    "hold": ("hold", ("version",)),
    "release": ("hold", ("version",)),
}


@dataclass
class SignIn:
    token: str = ""
    next: str = ""


@dataclass
class SignOut:
    csrf: str = ""


@dataclass
class Change:
    """A change as its form sends it (every field optional here: missing ones are refused
    with a message, not a validation dump)."""

    action: str = ""
    model: str = ""
    version: str = ""
    alias: str = ""
    reason: str = ""
    csrf: str = ""
    confirm: str = ""
    # The version the confirmation page said a rollback would go to: if the alias moved since,
    # the rollback would go elsewhere, and is refused rather than made.
    expected: str = ""


@dataclass(frozen=True)
class Plan:
    """A change checked and described, before it is made."""

    action: str
    model: str
    version: int | None
    alias: str
    reason: str
    current: int | None  # where the alias points now
    target: int | None  # where it will point (promote, rollback)


class ActionsController(Controller):
    path = "/"

    @get("/login", sync_to_thread=False, name="ui-login")
    def login_form(self, next_page: Annotated[str, QueryParameter(name="next")] = "") -> Any:
        return page(
            "login.html", viewer=None, next=safe_next(next_page or None), error="", title="Sign in"
        )

    @post("/login", sync_to_thread=True, status_code=303, name="ui-sign-in")
    def login(self, request: Request[Any, Any, Any], data: Annotated[SignIn, FORM]) -> Any:
        """Sign in with an API token: a session for it (the token is kept nowhere)."""
        check_same_origin(request)
        state = state_of(request)
        client = client_of(request)
        state.limiter.check(f"ui-sign-in:{client}")
        target = safe_next(data.next or None)
        try:
            if len(data.token) > 256:
                raise UnauthenticatedError("invalid, expired or revoked API token")
            session_id, session, _token = state.registry.open_ui_session(data.token)
        except UnauthenticatedError as error:
            signal = state.watch.note_refusal(client)
            if signal is not None:
                security_event(request, signal.kind, f"{signal.detail} (web UI sign-in)")
            return page(
                "login.html",
                status=401,
                viewer=None,
                next=target,
                error=error.message,
                title="Sign in",
            )
        response = Redirect(path=target, status_code=303)
        lifetime = int((session.expires_at - session.created_at).total_seconds())
        response.set_cookie(session_cookie(request, session_id, max_age=max(lifetime, 1)))
        return response

    @post("/logout", sync_to_thread=True, status_code=303, name="ui-sign-out")
    def logout(self, request: Request[Any, Any, Any], data: Annotated[SignOut, FORM]) -> Any:
        check_same_origin(request)
        try:
            who = viewer(request)
        except UnauthenticatedError:
            who = None  # the session has ended already: only the cookie is left to clear
        if who is not None:
            check_csrf(who, data.csrf)
            state_of(request).registry.close_ui_session(request.cookies.get(COOKIE, ""))
        response = Redirect(path="/ui/login", status_code=303)
        clear_cookie(request, response)
        return response

    @post("/confirm", sync_to_thread=True, status_code=200, name="ui-confirm")
    def confirm(self, request: Request[Any, Any, Any], data: Annotated[Change, FORM]) -> Any:
        """Step one: what the change would do, and a form to confirm it. Nothing moves."""
        who, plan = _checked(request, data)
        return page("confirm.html", viewer=who, plan=plan, title=f"Confirm: {plan.action}")

    @post("/act", sync_to_thread=True, status_code=303, name="ui-act")
    def act(self, request: Request[Any, Any, Any], data: Annotated[Change, FORM]) -> Any:
        """Step two: the confirmed change, made as the session's token."""
        who, plan = _checked(request, data)
        if data.confirm != "yes":
            raise InvalidInputError("the change was not confirmed", hint="confirm it on the page")
        ref = f"{plan.model}@{plan.version}"
        if plan.action == "promote":
            change = who.view.promote(ref, plan.alias, reason=plan.reason)
            notice = f"{plan.alias} now points at @{change.alias.number}"
        elif plan.action == "rollback":
            if data.expected != str(plan.target):
                raise ConflictError(
                    f"{plan.model}:{plan.alias} moved since the rollback was confirmed: it would "
                    f"now go to @{plan.target}",
                    hint="review the rollback again",
                )
            change = who.view.rollback(plan.model, plan.alias, reason=plan.reason)
            notice = f"{plan.alias} rolled back to @{change.alias.number}"
        elif plan.action == "hold":
            who.view.hold(ref, reason=plan.reason)
            notice = f"legal hold placed on @{plan.version}"
        else:
            who.view.release_hold(ref, reason=plan.reason)
            notice = f"legal hold on @{plan.version} released"
        signature = notice_signature(who.csrf, notice)
        return Redirect(path=model_url(plan.model, notice=notice, sig=signature), status_code=303)


def _checked(request: Request[Any, Any, Any], data: Change) -> tuple[Viewer, Plan]:
    """The signed-in viewer and the change it asks for, once the form came from this site
    with the session's CSRF token, the role allows the change, the token sees the model, and
    every field the change needs is there and well formed."""
    check_same_origin(request)
    if data.action not in ACTIONS:
        raise InvalidInputError(f"unknown action {data.action[:40]!r}")
    operation, needs = ACTIONS[data.action]
    who = viewer(request, operation)
    check_csrf(who, data.csrf)
    who.check_model(data.model)
    reason = data.reason.strip()
    if not reason:
        raise InvalidInputError("a change needs a reason", hint="say why on the form")
    if len(reason) > 4096 or "\x00" in reason:
        # The change's own check, at the first step: no confirmation of what it would refuse.
        raise InvalidInputError("a reason is at most 4096 characters, and holds no NUL")
    version = None
    if "version" in needs:
        if not data.version.isascii() or not data.version.isdigit() or len(data.version) > 9:
            raise InvalidInputError("a version number is needed")
        version = who.view.resolve(f"{data.model}@{data.version}").number
        held = f"{data.model}@{version}"
        if data.action == "release" and who.view.version_row(held).state.hold is None:
            # Refused at the first step, as the release itself would be.
            raise NotFoundError(f"{held} is not under legal hold")
    alias = validate_alias(data.alias.strip()) if "alias" in needs else ""
    current = target = None
    if alias:
        found = next((a for a in who.view.aliases(data.model) if a.alias == alias), None)
        current = None if found is None else found.number
        if found is not None and found.protected and not who.may("protect"):
            # Refused at the first step, as the move itself would be: no confirmation page
            # for a change that cannot be made.
            raise PermissionDeniedError(
                f"{data.model}:{alias} is protected: moving it needs the promoter role",
                hint="ask a promoter or an admin, or `model-registry alias unprotect` it",
            )
    if data.action == "promote":
        target = version
    elif data.action == "rollback":
        target = who.view.rollback_target(data.model, alias)
    return who, Plan(data.action, data.model, version, alias, reason, current, target)
