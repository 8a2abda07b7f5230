"""``treadle worker``: claim ready items forever; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from .. import default_worker_id
from ..validation import MAX_CONCURRENCY
from .context import (
    EXIT_USAGE,
    CliContext,
    CliError,
    console,
    emit_json,
    pass_state,
    plural,
    reconcile,
    run_async,
    seconds_option,
)

if TYPE_CHECKING:
    from ..events import Event
    from ..metrics import FinishedAttempt, MetricsServer
    from ..store.base import StateStore
    from ..workflow import Workflow

log = logging.getLogger("treadle.worker")


def attempt_line(done: FinishedAttempt) -> str:
    """``item 'a' stage 'parse': complete, attempt 1, 0.012 s`` (and the error's first line)."""
    where = f"item {done.item_id!r} stage {done.stage!r}"
    if done.subtask is not None:
        where += f" subtask {done.subtask!r}"
    attempt = "" if done.attempt is None else f", attempt {done.attempt}"
    line = f"{where}: {done.outcome}{attempt}, {done.seconds:.3f} s"
    return line + (f": {done.error}" if done.error else "")


@contextmanager
def logged_attempts(wf: Workflow) -> Iterator[None]:
    """Log each attempt that ends: a stage's at INFO, a fan-out subtask's at DEBUG."""
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    from ..metrics import AttemptTracker  # prometheus_client: only when it is needed

    tracker = AttemptTracker()

    def listener(event: Event) -> None:
        done = tracker.feed(event)
        if done is not None:
            log.log(logging.DEBUG if done.subtask else logging.INFO, "%s", attempt_line(done))

    wf.bus.add_listener(listener)
    try:
        yield
    finally:
        wf.bus.remove_listener(listener)


@contextmanager
def served_metrics(
    wf: Workflow, store: StateStore, host: str, port: int | None
) -> Iterator[MetricsServer | None]:
    """``--metrics-port``: the workflow's metrics at http://HOST:PORT/metrics meanwhile."""
    if port is None:
        yield None
        return
    from ..metrics import WorkflowMetrics  # prometheus_client: only when it is needed

    metrics = WorkflowMetrics(wf, store, process=True)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server = metrics.serve(port, host)
    except OSError as exc:
        metrics.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"{shown} is in use; pick another --metrics-port") from None
        why = exc.strerror or str(exc)
        raise CliError(f"cannot serve metrics on {shown}: {why}", EXIT_USAGE) from None
    try:
        yield server
    finally:
        server.close()
        metrics.close()


@click.command()
@click.option(
    "--concurrency", type=click.IntRange(1, MAX_CONCURRENCY), help="Stage executions in flight."
)
@click.option("--id", "worker_id", help="Name of this worker (default host:pid:random).")
@click.option(
    "--lease", default="60s", show_default=True, help="Lease duration (renewed while running)."
)
@click.option(
    "--poll",
    default="1s",
    show_default=True,
    help="Look for new items at least this often when idle.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port, printed).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="Address --metrics-port listens on (0.0.0.0: every interface).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on exit.")
@pass_state
def worker(
    state: CliContext,
    concurrency: int | None,
    worker_id: str | None,
    lease: str,
    poll: str,
    metrics_port: int | None,
    metrics_host: str,
    as_json: bool,
) -> None:
    """Claim ready items forever, on this machine or many sharing one database.

    SIGTERM or Ctrl-C stops claiming, lets in-flight stages finish and releases
    leases; a second signal exits at once (its leases then expire and other
    workers take the items over). With -v, one log line per finished stage.
    """
    lease_seconds = seconds_option(lease, "--lease")
    poll_seconds = seconds_option(poll, "--poll")
    wf = state.workflow(runnable=True)
    store = state.store()
    concurrency = concurrency or state.concurrency()
    name = worker_id or default_worker_id()
    err = console(stderr=True)
    reconcile(wf, store, err=err)

    async def go(metrics: MetricsServer | None) -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        received = 0

        def on_signal(signum: int) -> None:
            nonlocal received
            received += 1
            if received == 1:
                err.print(
                    f"worker {name}: {signal.Signals(signum).name}, finishing in-flight stages "
                    "(signal again to exit at once)"
                )
                stop.set()
            else:
                sys.stderr.flush()
                os._exit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        err.print(
            f"worker {name}: pipeline {wf.name!r}, store {state.store_url()}, "
            f"concurrency {concurrency}, lease {lease_seconds:g}s"
        )
        if metrics is not None:
            err.print(f"worker {name}: metrics at {metrics.url}")
        with state.sinks(wf), logged_attempts(wf):
            return await wf.serve(
                store,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                worker_id=name,
                stop=stop,
                poll_interval=poll_seconds,
            )

    with served_metrics(wf, store, metrics_host, metrics_port) as metrics:
        report = run_async(go(metrics))
    if as_json:
        emit_json(
            {
                "worker": name,
                "items": report.items,
                "executions": report.executions,
                "lost_leases": report.lost_leases,
                "errors": report.errors,
            }
        )
    else:
        err.print(
            f"worker {name}: stopped after {plural(report.executions, 'stage execution')} "
            f"on {plural(report.items, 'item claim')}"
            + (f"; lost leases: {', '.join(report.lost_leases)}" if report.lost_leases else "")
        )
