"""The built-in CLI commands, added through ``register_commands`` like any plugin's."""

from __future__ import annotations

import click

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: click.Group) -> None:
    from ..cli import commands, introspect, operate, plugin_new, review, worker

    for command in (
        commands.init,
        commands.validate,
        commands.graph,
        commands.add,
        commands.run,
        worker.worker,
        commands.status,
        review.review,
        commands.retry,
        operate.rerun,
        operate.cancel,
        commands.events,
        commands.prune,
        introspect.plugins_group,
        introspect.stages_group,
        introspect.gates_group,
        introspect.sinks_group,
        introspect.stores_group,
        plugin_new.plugin_group,
    ):
        cli.add_command(command)
