"""``treadle ui``: serve the review console for the pipeline and store of this directory;
``treadle ui users``: give reviewers their own tokens."""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path
from urllib.parse import quote

import click

from treadle_core.cli.context import EXIT_USAGE, CliContext, CliError, Seconds, sqlite_path

SECRET_NAME = "ui-secret"


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a `CliError` in one line when that fails
    (a busy port, an address this machine does not have)."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CliError(f"cannot listen on {shown}: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"{shown} is in use (another treadle ui?); pick another --port"
            ) from None
        raise CliError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    return sock


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_secret_file(state: CliContext, users: Path | None) -> Path:
    """Beside the SQLite store; else beside the users file; else .treadle/ by the pipeline."""
    path = sqlite_path(state.store_url())
    if path is not None:
        return path.parent / SECRET_NAME
    if users is not None:
        return users.parent / SECRET_NAME
    return state.pipeline_path.parent / ".treadle" / SECRET_NAME


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option(
    "--token",
    envvar="TREADLE_UI_TOKEN",
    help="One secret every request must carry (required with a non-loopback --host "
    "unless --users is given; env TREADLE_UI_TOKEN).",
)
@click.option(
    "--users",
    "users_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reviewers sign in with their own tokens from this file (see 'treadle ui users'); "
    "decisions are recorded under the signed-in name.",
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key that signs sessions and CSRF tokens, created on first start "
    "[default: ui-secret beside the SQLite store, or beside --users].",
)
@click.option(
    "--reviewer",
    help="Name recorded on decisions without --users (the page asks when missing).",
)
@click.option(
    "--poll",
    type=Seconds(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between the page's queue refreshes.",
)
@click.pass_context
def ui(
    ctx: click.Context,
    host: str,
    port: int,
    token: str | None,
    users_file: Path | None,
    secret_file: Path | None,
    reviewer: str | None,
    poll: float,
) -> None:
    """Serve the review console: the queue, each review, decisions, retries."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from .app import create_app
    from .security import SecretFileError, load_secret
    from .users import Users, UsersFileError

    state = ctx.find_object(CliContext)
    if state is None:
        raise click.UsageError("this command must run under the treadle CLI")
    loopback = is_loopback(host)
    if users_file is not None and token:
        raise CliError(
            "--users and --token do not go together: with --users every reviewer signs in "
            "with their own token (unset TREADLE_UI_TOKEN if it is set)",
            EXIT_USAGE,
        )
    if not loopback and not token and users_file is None:
        raise CliError(
            f"--host {host} is reachable from other machines: give --users FILE (a token per "
            "reviewer) or --token SECRET (or set TREADLE_UI_TOKEN), or bind 127.0.0.1",
            EXIT_USAGE,
        )
    try:
        reviewers = Users(users_file) if users_file is not None else None
    except UsersFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    wf = state.workflow()
    store = state.store(create=False)
    secret_path = secret_file or default_secret_file(state, users_file)
    try:
        secret = load_secret(secret_path)
    except SecretFileError as exc:
        raise CliError(str(exc)) from None
    app = create_app(
        wf,
        store,
        reviewer=None if reviewers else reviewer,
        token=token or None,
        users=reviewers,
        secret=secret,
        loopback_only=loopback,
        poll=poll,
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/"
    if token:
        url += f"?token={quote(token, safe='')}"
    sock = listen(host, port)  # before printing the URL: a busy port is one line
    click.echo(f"treadle ui: pipeline {wf.name!r} at {url} (Ctrl-C stops)")
    if reviewers is not None:
        names = reviewers.names()
        click.echo(f"treadle ui: {len(names)} reviewer(s) sign in with tokens from {users_file}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with sock, state.sinks(wf):
        server.run(sockets=[sock])


@ui.group()
def users() -> None:
    """Give reviewers their own tokens for 'treadle ui --users FILE'."""


FILE_OPTION = click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The users file (JSON: names and scrypt hashes of their tokens).",
)


@users.command("add")
@click.argument("name")
@FILE_OPTION
@click.option("--replace", is_flag=True, help="Give an existing reviewer a new token.")
def users_add(name: str, path: Path, replace: bool) -> None:
    """Add NAME and print their new token (shown once; only its hash is kept)."""
    from .users import UsersFileError, add_user

    try:
        token = add_user(path, name, replace=replace)
    except (UsersFileError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    click.echo(
        f"{name.strip()!r} can sign in with this token (shown once, keep it secret):", err=True
    )
    click.echo(token)


@users.command("remove")
@click.argument("name")
@FILE_OPTION
def users_remove(name: str, path: Path) -> None:
    """Remove NAME: their sessions end at their next request."""
    from .users import UsersFileError, remove_user

    try:
        remove_user(path, name)
    except UsersFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    click.echo(f"removed {name!r} from {path}")


@users.command("list")
@FILE_OPTION
def users_list(path: Path) -> None:
    """The reviewers in the file, with when each token was made."""
    from .users import UsersFileError, read_users

    try:
        entries = read_users(path)
    except UsersFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not entries:
        click.echo(f"no reviewers in {path} (add one with 'treadle ui users add NAME')", err=True)
    for name in sorted(entries):
        click.echo(f"{name}\t{entries[name].get('added', '')}")
