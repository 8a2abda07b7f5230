"""The ``treadle`` command line: a click group whose commands all arrive through plugins.

`create_cli(pm)` builds the group and lets every plugin (the built-in
``treadle_core.builtins.commands`` first) add commands via ``register_commands``.
"""

from __future__ import annotations

import sys
from typing import Any

import click
import pluggy

from .. import __version__
from .context import LOG_LEVELS, CliContext, CliError, TreadleGroup, accept_global_options

__all__ = ["CliContext", "CliError", "create_cli", "main"]


def create_cli(pm: pluggy.PluginManager | None = None) -> click.Group:
    """The ``treadle`` group with the commands of every plugin registered in ``pm``."""
    from ..plugins import TreadlePluginManager, get_plugin_manager

    manager = pm if pm is not None else get_plugin_manager()
    if not isinstance(manager, TreadlePluginManager):
        raise TypeError("create_cli() needs the manager from get_plugin_manager()")

    @click.group(
        cls=TreadleGroup,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @click.option(
        "--store",
        "store_url",
        envvar="TREADLE_STORE",
        metavar="URL",
        help="State store URL (overrides [pipeline].store; env TREADLE_STORE).",
    )
    @click.option(
        "-p",
        "--pipeline",
        "pipeline_path",
        default=None,
        metavar="PATH",
        help="Pipeline file, or a directory holding treadle.toml (default: ./treadle.toml).",
    )
    @click.option(
        "--app",
        "app_ref",
        envvar="TREADLE_APP",
        metavar="MODULE:ATTR",
        help="A Workflow built in Python (or a function returning one) instead of "
        "treadle.toml (env TREADLE_APP).",
    )
    @click.option(
        "-v",
        "--verbose",
        count=True,
        help="Log more on stderr: -v info (a line per finished stage of a worker), -vv debug.",
    )
    @click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        envvar="TREADLE_LOG_LEVEL",
        help="Level of Treadle's log on stderr (default: warning; overrides -v, which "
        "overrides env TREADLE_LOG_LEVEL).",
    )
    @click.version_option(__version__, prog_name="treadle")
    @click.pass_context
    def cli(
        ctx: click.Context,
        store_url: str | None,
        pipeline_path: str | None,
        app_ref: str | None,
        verbose: int,
        log_level: str | None,
    ) -> None:
        """Treadle: persistent, resumable, human-in-the-loop pipelines.

        The pipeline comes from ./treadle.toml (or -p PATH), from Python (--app), or,
        for commands that run no stage code (status, review, events, rerun, cancel,
        ui), from the store alone (--store URL): it records the pipeline each time it
        runs.
        """
        state = CliContext(manager, pipeline_path, store_url, app_ref)
        ctx.obj = state
        # Closed last (callbacks run in reverse): the store's closing may still log.
        ctx.call_on_close(state.close_logging)
        ctx.call_on_close(state.close)
        from_env = ctx.get_parameter_source("log_level") == click.core.ParameterSource.ENVIRONMENT
        state.set_logging(
            verbose=verbose,
            level=None if from_env else log_level,
            env_level=log_level if from_env else None,
        )

    manager.add_commands(cli)
    for command in cli.commands.values():
        accept_global_options(command)
    return cli


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    from ..plugins import get_plugin_manager

    cli = create_cli(get_plugin_manager())
    return cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="treadle")
