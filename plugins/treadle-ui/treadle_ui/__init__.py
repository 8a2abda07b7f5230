"""Treadle review console: ``treadle ui`` serves a local web page where people decide reviews."""

from __future__ import annotations

from typing import TYPE_CHECKING

from treadle_core import hookimpl

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``treadle ui``."""
    from .command import ui

    cli.add_command(ui)
