"""``treadle worker``: claim ready items forever; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import click

from .. import default_worker_id
from ..validation import MAX_CONCURRENCY
from .context import (
    CliContext,
    console,
    emit_json,
    pass_state,
    plural,
    reconcile,
    run_async,
    seconds_option,
)


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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on exit.")
@pass_state
def worker(
    state: CliContext,
    concurrency: int | None,
    worker_id: str | None,
    lease: str,
    poll: str,
    as_json: bool,
) -> None:
    """Claim ready items forever, on this machine or many sharing one database.

    SIGTERM or Ctrl-C stops claiming, lets in-flight stages finish and releases
    leases; a second signal exits at once (its leases then expire and other
    workers take the items over).
    """
    lease_seconds = seconds_option(lease, "--lease")
    poll_seconds = seconds_option(poll, "--poll")
    wf = state.workflow(runnable=True)
    store = state.store()
    concurrency = concurrency or state.concurrency()
    name = worker_id or default_worker_id()
    err = console(stderr=True)
    reconcile(wf, store, err=err)

    async def go() -> Any:
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
        with state.sinks(wf):
            return await wf.serve(
                store,
                concurrency=concurrency,
                lease_seconds=lease_seconds,
                worker_id=name,
                stop=stop,
                poll_interval=poll_seconds,
            )

    report = run_async(go())
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
