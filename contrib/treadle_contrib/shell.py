"""The ``shell`` stage type: run a command (an argv list, never a shell string) per item."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treadle_core import Complete, Retry, Stage, StageContext, StageOutput, WorkItem
from treadle_core.hookspecs import Duration, Option, StageType, hookimpl
from treadle_core.templating import check, render

#: How much of stderr a Retry carries (the end is where the error usually is).
STDERR_TAIL = 2000


class ShellStage(Stage):
    """Run ``command`` with ``{item.id}`` / ``{item.data[key]}`` filled in; stdout is the artefact.

    Exit 0 completes the stage; any other exit code (or the timeout) is a `Retry`
    carrying the end of stderr. The environment gets TREADLE_ITEM_ID, TREADLE_STAGE,
    TREADLE_ATTEMPT and, on a retry after a gate's rejection, TREADLE_FEEDBACK.
    """

    description = "Run a command (argv list) per item; stdout is the artefact"

    def __init__(
        self,
        command: list[Any],
        timeout: float | None = None,
        env: dict[str, Any] | None = None,
        cwd: str | Path | None = None,
        strip: bool = True,
    ):
        if isinstance(command, str) or not isinstance(command, list) or not command:
            raise ValueError(
                "command must be a non-empty list of arguments, e.g. "
                '["pdftotext", "{item.data[path]}", "-"] (a shell string is not accepted)'
            )
        if not all(isinstance(arg, str | int | float) for arg in command):
            raise ValueError("every argument of command must be a string or a number")
        self.command = [str(arg) for arg in command]
        for arg in self.command:
            check(arg)
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be longer than zero")
        self.timeout = timeout
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.cwd = None if cwd is None else Path(cwd)
        self.strip = strip

    def argv(self, item: WorkItem) -> list[str]:
        return [render(arg, item) for arg in self.command]

    async def execute(self, item: WorkItem, ctx: StageContext) -> StageOutput:
        argv = self.argv(item)
        env = {
            **os.environ,
            **self.env,
            "TREADLE_ITEM_ID": item.id,
            "TREADLE_STAGE": ctx.stage,
            "TREADLE_ATTEMPT": str(ctx.attempt),
        }
        if ctx.feedback is not None:
            env["TREADLE_FEEDBACK"] = ctx.feedback.summary
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.cwd,
            )
        except OSError as exc:
            return StageOutput(Retry(f"cannot run {argv[0]!r}: {exc.strerror or exc}"))
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return StageOutput(Retry(f"{argv[0]} timed out after {self.timeout:g} s"))
        err = stderr.decode(errors="replace")
        if proc.returncode != 0:
            tail = err[-STDERR_TAIL:].strip()
            message = f"{argv[0]} exited with status {proc.returncode}"
            return StageOutput(Retry(f"{message}: {tail}" if tail else message))
        out = stdout.decode(errors="replace")
        return StageOutput(Complete(), artefact=out.strip() if self.strip else out)


@hookimpl
def register_stage_types(register: Callable[[StageType], None]) -> None:
    register(
        StageType(
            "shell",
            ShellStage,
            ShellStage.description,
            {
                "command": Option(
                    list, required=True, description="argv list; {item.id}, {item.data[key]}"
                ),
                "timeout": Option(Duration, description="Kill the command after this long"),
                "env": Option(dict, description="Extra environment variables"),
                "cwd": Option(Path, description="Working directory (relative to treadle.toml)"),
                "strip": Option(bool, default=True, description="Strip whitespace from stdout"),
            },
        )
    )
