"""`serve` and `token create|list|revoke`: the REST API server and the tokens it accepts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cli.ui import handle_errors, local_only, print_json, print_table, stdout, table
from registry import wire
from registry.errors import ConflictError, InvalidInputError
from registry.roles import ROLES

if TYPE_CHECKING:
    from registry.service import Registry

JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _home() -> Registry:
    """This host's registry home (imported on use: `--help` needs none of it)."""
    from registry.service import Registry

    return Registry.open()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def serve(host: str, port: int, workers: int, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Serve the REST API (Litestar under uvicorn) for this registry home. Several processes
    (--workers, or several hosts) can serve one PostgreSQL catalog and one set of stores."""
    import uvicorn

    local_only("serve")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInputError("TLS needs both --tls-cert and --tls-key")
    with _home():
        pass  # fail here, with a clear message, if the home is not usable
    _check_address(host, port)
    try:
        uvicorn.run(
            "registry.api.server:app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            # uvicorn would believe X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS); the
            # app believes it only from `[api] trusted_proxies` (registry.api.common.client_of).
            proxy_headers=False,
            log_level="info",
        )
    except SystemExit as stop:
        if stop.code == STARTUP_FAILURE:  # uvicorn's own code, which is our exit 3
            raise ConflictError(
                f"the server did not start on {host}:{port} (uvicorn's log line above says why)",
                hint="another process may have taken the port meanwhile: choose another with "
                "--port",
            ) from None
        raise


# uvicorn exits with this when it cannot start (the port taken, the certificate unreadable).
STARTUP_FAILURE = 3


def _check_address(host: str, port: int) -> None:
    """Refuse an address this host cannot listen on before uvicorn tries (it would log one
    line and exit 3, which is this CLI's "invalid input")."""
    import errno
    import socket

    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as error:
        raise InvalidInputError(
            f"cannot listen on {host!r}: {error.strerror}",
            hint="give --host an address of this machine (127.0.0.1, 0.0.0.0, ::)",
        ) from None
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConflictError(
                    f"cannot listen on {host}:{port}: the port is in use",
                    hint="another process listens there (another `model-registry serve`?): "
                    "stop it, or choose another port with --port",
                ) from None
            raise InvalidInputError(
                f"cannot listen on {host}:{port}: {error.strerror}",
                hint="give --host an address of this machine and --port a port this user may "
                "open (1024 and above without privileges)",
            ) from None


@click.group()
def token() -> None:
    """REST API tokens: each has a role and the model patterns it may act on."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option(
    "--models",
    "models",
    multiple=True,
    required=True,
    help="Model name pattern the token may act on (repeat; 'org/*', '*').",
)
@click.option("--expires", metavar="DURATION", help="Lifetime (30d, 12h); default: none.")
@JSON
@handle_errors
def create(
    name: str, role: str, models: tuple[str, ...], expires: str | None, as_json: bool
) -> None:
    """Create a token; it is printed once (only a hash of it is kept)."""
    local_only("token")
    with _home() as registry:
        record, text = registry.create_token(name, role=role, models=models, expires=expires)
    if as_json:
        print_json(wire.NewToken.of(record, text))
        return
    click.echo(text)
    click.echo(
        f"token {record.id} ({record.role} on {', '.join(record.models)}): shown once, keep it "
        "in your CI's secret store",
        err=True,
    )


@token.command("list")
@JSON
@handle_errors
def list_(as_json: bool) -> None:
    """Every token (never their secrets)."""
    local_only("token")
    with _home() as registry:
        tokens = registry.tokens()
    if as_json:
        print_json([wire.Token.of(t) for t in tokens])
        return
    if not tokens:
        stdout.print("no tokens: model-registry token create NAME --role ...")
        return
    found = table("id", "name", "role", "created (UTC)", "expires", "state", wide=("models",))
    for t in tokens:
        state = "revoked" if t.revoked_at else "live"
        found.add_row(
            t.id,
            t.name,
            t.role,
            t.created_at.strftime("%Y-%m-%d %H:%M"),
            t.expires_at.strftime("%Y-%m-%d %H:%M") if t.expires_at else "never",
            state,
            ", ".join(t.models),
        )
    print_table(found)


@token.command("revoke")
@click.argument("token_id")
@JSON
@handle_errors
def revoke(token_id: str, as_json: bool) -> None:
    """Revoke a token at once (every server process refuses it from its next request)."""
    local_only("token")
    with _home() as registry:
        record = registry.revoke_token(token_id)
    if as_json:
        print_json(wire.Token.of(record))
    else:
        stdout.print(f"revoked {record.id} ({record.name})")


def register(group: click.Group) -> None:
    group.add_command(serve)
    group.add_command(token)
