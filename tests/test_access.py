"""Authorization in one place and key-unwrap accounting per context: every operation of the
facade declares the role it needs and enforces it for every caller; a token's operations count
their own key unwraps."""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

import pytest

from registry.errors import PermissionDeniedError
from registry.ops import access
from registry.ops.context import note_unwrap
from registry.ops.parallel import bounded_map
from registry.service import Registry
from registry.storage import deadline

# Facade methods no role guards: the handle itself, authentication (no role is known yet),
# and counting the unwraps of the caller's own calls (it changes nothing).
UNGUARDED = {
    "close",
    "acting_as",
    "authenticate",
    "counting_unwraps",
    # The web UI's sessions: signing in is authenticating; a session acts as its token.
    "open_ui_session",
    "ui_session",
    "close_ui_session",
}


def _delegate(method: object) -> object:
    """The operation a facade method delegates to (`return x_ops.fn(self._context, ...)`)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))  # type: ignore[arg-type]
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return)]
    assert len(returns) == 1, "a facade method is one delegation"
    call = returns[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
    assert isinstance(call.func.value, ast.Name)
    # The operation's module is imported by the method itself (`from registry.ops import x as
    # x_ops`: the facade imports each operation on first use), or by the facade's module.
    imported = {
        alias.asname or alias.name: f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }
    name = call.func.value.id
    if name in imported:
        module = importlib.import_module(imported[name])
    else:
        module = inspect.getmodule(method).__dict__[name]  # type: ignore[union-attr]
    return getattr(module, call.func.attr)


def _operations() -> list[str]:
    return [
        name
        for part in Registry.__mro__
        if part.__module__.startswith("registry.")
        for name, member in vars(part).items()
        if inspect.isfunction(member) and not name.startswith("_") and name not in UNGUARDED
    ]


@pytest.mark.parametrize("name", _operations())
def test_every_operation_declares_the_role_it_needs(name: str) -> None:
    operation = _delegate(getattr(Registry, name))
    required = getattr(operation, "required", None)
    assert required in access.PERMISSIONS, f"Registry.{name} runs an operation with no role"


def test_a_reader_may_not_push_or_hold(home: Path, model_dir: Path) -> None:
    """The roles of the REST API hold for the Python API too: a reader neither pushes nor places
    or releases legal holds (before, only promote was refused)."""
    Registry.init(home)
    with Registry.open(home) as admin:
        admin.push("llama", model_dir)
    with Registry.open(home, role="reader") as reader:
        with pytest.raises(PermissionDeniedError, match="reader role may not push"):
            reader.push("llama", model_dir)
        with pytest.raises(PermissionDeniedError, match="may not place or release legal holds"):
            reader.hold("llama@1", reason="litigation")
        with pytest.raises(PermissionDeniedError, match="may not place or release legal holds"):
            reader.release_hold("llama@1", reason="settled")
        with pytest.raises(PermissionDeniedError, match="may not replicate between regions"):
            reader.replicate()
        assert reader.resolve("llama").number == 1  # reading is a reader's right
    with Registry.open(home, role="pusher") as pusher, pytest.raises(PermissionDeniedError):
        pusher.hold("llama@1", reason="litigation")
    with Registry.open(home) as admin:
        assert admin.versions("llama")[-1].number == 1  # the refused push wrote nothing
        assert admin.holds() == []
        assert [e.action for e in admin.audit_events(subject="llama")] == ["push"]


def test_a_pusher_moves_an_alias_that_announces_an_event(
    home: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Operations a role may do run the steps they need whatever role those steps would need
    on their own (a promote delivers its webhook event; delivering on demand is an admin's)."""
    Registry.init(home)
    with Registry.open(home) as admin:
        admin.push("llama", model_dir)
        admin.add_webhook("http://127.0.0.1:9/hook")  # nothing listens: the delivery fails
    with Registry.open(home, role="pusher") as pusher:
        change = pusher.promote("llama@1", "prod")
        assert change.alias.number == 1 and change.undelivered
        with pytest.raises(PermissionDeniedError, match="may not deliver events"):
            pusher.deliver_events()


def test_a_token_counts_its_own_key_unwraps(registry: Registry, model_dir: Path) -> None:
    """A verify through a token audits the key unwraps it took, as a direct one does; the
    handle the token's view came from counts none of them (before, the view audited 0 and the
    base handle collected its unwraps)."""
    registry.push("llama", model_dir)
    direct = registry.verify("llama", read_data=True)
    assert direct.ok
    unwraps = registry.audit_events(subject="llama")[0].details["key_unwraps"]
    assert unwraps > len(list(model_dir.iterdir()))  # every file's key and the manifest's
    record, secret = registry.create_token("ci", role="reader", models=["*"])
    token = registry.authenticate(secret)
    base_before = registry.unwraps
    view = registry.acting_as(token)
    assert view.verify("llama", read_data=True).ok
    event = registry.audit_events(subject="llama")[0]
    assert event.actor == f"token:ci:{record.id}"
    assert event.details["key_unwraps"] == unwraps
    assert view.unwraps == unwraps
    assert registry.unwraps == base_before


def test_unwraps_on_worker_threads_count_for_the_operation_that_started_them(
    registry: Registry,
) -> None:
    """Stores unwrap keys on the threads of hedged reads and bounded fan-outs: those count for
    the operation (and context) that started the threads, never for another one."""
    context = registry._context
    other = context.for_token(registry.create_token("t", role="reader", models=["*"])[0])
    with context.counting_unwraps() as count:
        deadline.submit(lambda: note_unwrap("blake3:x")).result()
        bounded_map(lambda _item: note_unwrap("blake3:x"), [1, 2, 3], limit=3, name="t")
    note_unwrap("blake3:x")  # outside any operation: nobody's
    assert count.value == 4
    assert context.unwraps.value == 4
    assert other.unwraps.value == 0


def test_a_token_record_made_up_in_process_raises_nobody(home: Path, model_dir: Path) -> None:
    """`acting_as` gives a token's request the token's role, but never more than the handle's:
    a reader handle cannot make itself an admin with a record of its own making."""
    Registry.init(home)
    with Registry.open(home) as admin:
        admin.push("llama", model_dir)
        record, _secret = admin.create_token("ops", role="admin", models=["*"])
    with Registry.open(home, role="reader") as reader:
        view = reader.acting_as(record)
        assert view.role == "reader"
        with pytest.raises(PermissionDeniedError):
            view.hold("llama@1", reason="escalated")
    with Registry.open(home) as admin:
        assert admin.holds() == []
        assert admin.acting_as(record).role == "admin"  # a real admin's token keeps its role


@pytest.mark.parametrize("internal", ["catalog", "replicas", "store", "keys", "signer"])
def test_the_catalog_stores_and_keys_themselves_are_the_admins(
    home: Path, model_dir: Path, internal: str
) -> None:
    """Through the handle's catalog, stores or keys every rule would be bypassed (a reader
    writing audit entries, deleting objects): only an admin handle hands them out."""
    Registry.init(home)
    with Registry.open(home) as admin:
        assert getattr(admin, internal) is not None
    with Registry.open(home, role="promoter") as promoter:
        with pytest.raises(PermissionDeniedError, match="reach the catalog, stores or keys"):
            getattr(promoter, internal)
        with pytest.raises(PermissionDeniedError):
            promoter.checkpoints["push-stored"] = lambda: None
        assert promoter.settings.registry_id  # settings are no secret
