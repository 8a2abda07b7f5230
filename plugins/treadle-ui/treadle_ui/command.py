"""``treadle ui``: serve the review console for the pipeline and store of this directory."""

from __future__ import annotations

import errno
import ipaddress
import socket
from urllib.parse import quote

import click

from treadle_core.cli.context import EXIT_USAGE, CliContext, CliError, Seconds, pass_state


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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option(
    "--token",
    envvar="TREADLE_UI_TOKEN",
    help="Secret every request must carry (required with a non-loopback --host; "
    "env TREADLE_UI_TOKEN).",
)
@click.option("--reviewer", help="Name recorded on decisions (the page asks when missing).")
@click.option(
    "--poll",
    type=Seconds(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between the page's queue refreshes.",
)
@pass_state
def ui(
    state: CliContext,
    host: str,
    port: int,
    token: str | None,
    reviewer: str | None,
    poll: float,
) -> None:
    """Serve the review console: the queue, each review, decisions, retries."""
    import uvicorn

    from .app import create_app

    loopback = is_loopback(host)
    if not loopback and not token:
        raise CliError(
            f"--host {host} is reachable from other machines: give --token SECRET "
            "(or set TREADLE_UI_TOKEN), or bind 127.0.0.1",
            EXIT_USAGE,
        )
    wf = state.workflow()
    store = state.store(create=False)
    app = create_app(
        wf, store, reviewer=reviewer, token=token or None, loopback_only=loopback, poll=poll
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}/"
    if token:
        url += f"?token={quote(token, safe='')}"
    sock = listen(host, port)  # before printing the URL: a busy port is one line
    click.echo(f"treadle ui: pipeline {wf.name!r} at {url} (Ctrl-C stops)", err=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with sock, state.sinks(wf):
        server.run(sockets=[sock])
