"""``treadle rerun`` and ``treadle cancel``: steering items already in the pipeline.

Both run no stage code, so they work with ``--store URL`` alone (the store's recorded
pipeline); the work is done by `treadle_core.ops`, like the console's buttons.
"""

from __future__ import annotations

from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn

from .. import ops
from ..model import StageStatus
from .context import (
    EXIT_USAGE,
    CliContext,
    CliError,
    console,
    emit_json,
    pass_state,
    reviewer_name,
    run_async,
)

#: Bulk re-runs show a progress bar from this many targets on (stderr a terminal).
PROGRESS_EVERY = 500

_SELECTIONS = ", ".join(["all", "stale", *(s.value for s in StageStatus)])


@click.command()
@click.argument("item_id", metavar="[ITEM]", required=False)
@click.argument("stage", metavar="[STAGE]", required=False)
@click.option("--stage", "bulk_stage", metavar="S", help="Every item's stage S (with a selection).")
@click.option("--all", "all_", is_flag=True, help="With --stage: every item where S has run.")
@click.option("--stale", is_flag=True, help="With --stage: every item where S is stale.")
@click.option(
    "--status",
    "status_",
    metavar="STATUS",
    help="With --stage: every item where S has this status (failed, skipped, ...).",
)
@click.option("--no-cascade", is_flag=True, help="Only the stage; what is downstream goes stale.")
@click.option("--reason", help="Why (journalled with each reset).")
@click.option(
    "--by", metavar="NAME", help="Who asks (default: $TREADLE_REVIEWER, then the login name)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def rerun(
    state: CliContext,
    item_id: str | None,
    stage: str | None,
    bulk_stage: str | None,
    all_: bool,
    stale: bool,
    status_: str | None,
    no_cascade: bool,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Run stages again: ITEM STAGE, or --stage S with --all, --stale or --status STATUS.

    The stage and (unless --no-cascade) every stage downstream of it go back to pending,
    attempts keep counting, and each reset is journalled with --by and --reason. A
    worker or 'treadle run' then runs them. A running stage is refused.
    """
    selection = _selection(item_id, stage, bulk_stage, all_, stale, status_)
    by = reviewer_name(by, "--by")
    wf = state.workflow()
    store = state.store(create=False)
    if selection is None:
        assert item_id is not None and stage is not None
        wf.dependencies(stage)  # UnknownStageError names the closest stage
        wf.status(item_id, store)  # UnknownItemError
        targets: Any = [(item_id, stage)]
    else:
        assert bulk_stage is not None
        try:
            targets = ops.rerun_targets(wf, store, bulk_stage, selection)
        except ValueError as exc:
            raise CliError(f"--status: {exc}", EXIT_USAGE) from None
    err = console(stderr=True)
    bar = Progress(
        TextColumn("re-running"),
        BarColumn(),
        TextColumn("{task.completed} stages"),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    )
    task = bar.add_task("rerun", total=None)

    def progress(done: int, total: int | None) -> None:
        if done >= PROGRESS_EVERY:
            bar.update(task, completed=done)

    async def go() -> ops.RerunReport:
        with state.sinks(wf), bar:
            return await ops.rerun(
                wf,
                store,
                targets,
                cascade=not no_cascade,
                reason=reason,
                by=by,
                progress=progress,
            )

    report = run_async(go())
    if selection is None and report.skipped:
        raise CliError(report.skipped[0][2])
    if as_json:
        emit_json(report.to_dict())
        return
    n = len(report.reset)
    click.echo(
        f"{n} stage{'s' if n != 1 else ''} back to pending"
        + (" with everything downstream" if n and not no_cascade else "")
        + ("; a worker or 'treadle run' runs them" if n else "")
    )
    for _, _, why in report.skipped:
        click.echo(f"skipped: {why}", err=True)


def _selection(
    item_id: str | None,
    stage: str | None,
    bulk_stage: str | None,
    all_: bool,
    stale: bool,
    status_: str | None,
) -> str | None:
    """The bulk selection (all, stale, or a status), or None for ITEM STAGE."""
    chosen = [name for name, on in (("all", all_), ("stale", stale), ("status", status_)) if on]
    if bulk_stage is None:
        if chosen:
            raise CliError(f"--{chosen[0]} goes with --stage S", EXIT_USAGE)
        if item_id is None or stage is None:
            raise CliError(
                "give ITEM STAGE, or --stage S with --all, --stale or --status STATUS", EXIT_USAGE
            )
        return None
    if item_id is not None:
        raise CliError("--stage S takes no ITEM (give ITEM STAGE for one item)", EXIT_USAGE)
    if len(chosen) != 1:
        raise CliError(
            f"--stage {bulk_stage} needs exactly one of --all, --stale, --status STATUS "
            f"({_SELECTIONS})",
            EXIT_USAGE,
        )
    if status_ is not None:
        return status_
    return ops.STALE if stale else ops.ALL


@click.command()
@click.argument("item_ids", metavar="ITEM...", nargs=-1, required=True)
@click.option("--reason", help="Why (journalled with the cancellation).")
@click.option(
    "--by", metavar="NAME", help="Who cancels (default: $TREADLE_REVIEWER, then the login name)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def cancel(
    state: CliContext, item_ids: tuple[str, ...], reason: str | None, by: str | None, as_json: bool
) -> None:
    """Cancel items: their unfinished stages become cancelled and are never run again
    (until 'treadle rerun' revives one). A stage running in a worker is stopped at the
    worker's next lease renewal; its result, if any, is dropped."""
    by = reviewer_name(by, "--by")
    wf = state.workflow()
    store = state.store(create=False)

    async def go() -> ops.CancelReport:
        with state.sinks(wf):
            return await ops.cancel(wf, store, list(item_ids), reason=reason, by=by)

    report = run_async(go())
    if as_json:
        emit_json(report.to_dict())
        return
    if len(item_ids) == 1 and report.skipped:
        raise CliError(report.skipped[0][1])
    n = len(report.cancelled)
    click.echo(f"cancelled {n} item{'s' if n != 1 else ''}")
    for _, why in report.skipped:
        click.echo(f"skipped: {why}", err=True)
