"""Quality gates: ``min-length``, ``regex``, ``json-schema`` and ``command``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treadle_core import (
    Accepted,
    CriterionResult,
    QualityContext,
    QualityFeedback,
    QualityGate,
    Rejected,
    StageOutput,
    Uncertain,
    WorkItem,
)
from treadle_core.hookspecs import Duration, GateType, Option, hookimpl
from treadle_core.templating import check, render

_MISSING = object()


def _select(artefact: Any, field: str | None) -> Any:
    """The part of the artefact a gate judges: all of it, or ``field`` (dotted) of a mapping."""
    if field is None:
        return artefact
    value = artefact
    for part in field.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _text(value: Any) -> str:
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _missing(field: str) -> Rejected:
    return Rejected(
        QualityFeedback(
            f"the output has no field {field!r}",
            [CriterionResult(f"field {field}", "present", "missing", False)],
        )
    )


class MinLength(QualityGate):
    """The output (or one field of it) has at least ``chars`` characters / ``words`` words."""

    def __init__(self, chars: int = 0, words: int = 0, field: str | None = None):
        if chars < 0 or words < 0 or (chars == 0 and words == 0):
            raise ValueError("give chars and/or words, at least 1")
        self.chars = chars
        self.words = words
        self.field = field

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Accepted | Rejected:
        value = _select(output.artefact, self.field)
        if value is _MISSING:
            assert self.field is not None
            return _missing(self.field)
        text = _text(value)
        results = []
        if self.chars:
            n = len(text.strip())
            results.append(CriterionResult("min chars", self.chars, n, n >= self.chars))
        if self.words:
            n = len(text.split())
            results.append(CriterionResult("min words", self.words, n, n >= self.words))
        failed = [r for r in results if not r.passed]
        if not failed:
            return Accepted()
        summary = "; ".join(f"{r.actual} {r.name[4:]}, need at least {r.expected}" for r in failed)
        return Rejected(QualityFeedback(f"output too short: {summary}", failed))


class RegexGate(QualityGate):
    """The output matches ``pattern`` (``must_match = false``: must not match)."""

    def __init__(
        self,
        pattern: str,
        field: str | None = None,
        ignore_case: bool = False,
        must_match: bool = True,
    ):
        try:
            self.regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from None
        self.field = field
        self.must_match = must_match

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Accepted | Rejected:
        value = _select(output.artefact, self.field)
        if value is _MISSING:
            assert self.field is not None
            return _missing(self.field)
        match = self.regex.search(_text(value))
        if bool(match) == self.must_match:
            return Accepted()
        pattern = self.regex.pattern
        if self.must_match:
            return Rejected(
                QualityFeedback(
                    f"output does not match /{pattern}/",
                    [CriterionResult("regex", f"matches /{pattern}/", "no match", False)],
                )
            )
        assert match is not None
        return Rejected(
            QualityFeedback(
                f"output must not match /{pattern}/ but contains {match.group(0)!r}",
                [CriterionResult("regex", f"no match for /{pattern}/", match.group(0), False)],
            )
        )


class JsonSchemaGate(QualityGate):
    """The output validates against a JSON Schema (``schema`` table or ``schema_file``)."""

    MAX_ERRORS = 10

    def __init__(
        self,
        schema: dict[str, Any] | None = None,
        schema_file: str | Path | None = None,
        field: str | None = None,
    ):
        import jsonschema

        if (schema is None) == (schema_file is None):
            raise ValueError("give exactly one of schema (a table) or schema_file (a path)")
        if schema_file is not None:
            try:
                schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"cannot read schema_file {schema_file}: {exc.strerror}") from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"schema_file {schema_file} is not valid JSON: {exc}") from None
        assert schema is not None
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        self.validator = cls(schema)
        self.field = field

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Accepted | Rejected:
        value = _select(output.artefact, self.field)
        if value is _MISSING:
            assert self.field is not None
            return _missing(self.field)
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if not errors:
            return Accepted()
        results = []
        for error in errors[: self.MAX_ERRORS]:
            where = "/" + "/".join(str(p) for p in error.absolute_path)
            results.append(
                CriterionResult(
                    f"schema {where}",
                    f"{error.validator}: {json.dumps(error.validator_value, default=str)[:200]}",
                    error.instance if _small(error.instance) else _text(error.instance)[:200],
                    False,
                )
            )
        more = (
            f" (and {len(errors) - self.MAX_ERRORS} more)" if len(errors) > self.MAX_ERRORS else ""
        )
        first = errors[0]
        where = "/" + "/".join(str(p) for p in first.absolute_path)
        return Rejected(
            QualityFeedback(
                f"output does not match the schema: at {where}: {first.message}{more}", results
            )
        )


def _small(value: Any) -> bool:
    return len(_text(value)) <= 200


class CommandGate(QualityGate):
    """An external command judges the output (on its stdin): exit 0 accepts; stdout is feedback."""

    def __init__(
        self,
        command: list[Any],
        timeout: float | None = None,
        uncertain_status: int | None = None,
        field: str | None = None,
    ):
        if isinstance(command, str) or not isinstance(command, list) or not command:
            raise ValueError("command must be a non-empty list of arguments (not a shell string)")
        self.command = [str(a) for a in command]
        for arg in self.command:
            check(arg)
        self.timeout = timeout
        self.uncertain_status = uncertain_status
        self.field = field

    async def evaluate(
        self, item: WorkItem, stage: str, output: StageOutput, ctx: QualityContext
    ) -> Accepted | Rejected | Uncertain:
        value = _select(output.artefact, self.field)
        if value is _MISSING:
            assert self.field is not None
            return _missing(self.field)
        argv = [render(a, item) for a in self.command]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                proc.communicate(_text(value).encode()), self.timeout
            )
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return Uncertain(f"gate command {argv[0]} timed out after {self.timeout:g} s")
        said = stdout.decode(errors="replace").strip() or stderr.decode(errors="replace").strip()
        if proc.returncode == 0:
            return Accepted()
        if self.uncertain_status is not None and proc.returncode == self.uncertain_status:
            return Uncertain(said or f"{argv[0]} is not sure (status {proc.returncode})")
        return Rejected(
            QualityFeedback(
                said or f"{argv[0]} rejected the output (status {proc.returncode})",
                [
                    CriterionResult(
                        f"command {argv[0]}", "exit status 0", f"exit status {proc.returncode}"
                    )
                ],
            )
        )


_FIELD = Option(str, description="Judge only this (dotted) field of a mapping artefact")


@hookimpl
def register_quality_gates(register: Callable[[GateType], None]) -> None:
    register(
        GateType(
            "min-length",
            MinLength,
            "At least N characters and/or words",
            {
                "chars": Option(int, default=0, description="Minimum characters"),
                "words": Option(int, default=0, description="Minimum words"),
                "field": _FIELD,
            },
        )
    )
    register(
        GateType(
            "regex",
            RegexGate,
            "The output matches (or must not match) a regular expression",
            {
                "pattern": Option(str, required=True, description="Python regular expression"),
                "must_match": Option(bool, default=True, description="false: must NOT match"),
                "ignore_case": Option(bool, default=False),
                "field": _FIELD,
            },
        )
    )
    register(
        GateType(
            "json-schema",
            JsonSchemaGate,
            "The output validates against a JSON Schema",
            {
                "schema": Option(dict, description="The schema, inline"),
                "schema_file": Option(Path, description="Or a JSON file holding it"),
                "field": _FIELD,
            },
        )
    )
    register(
        GateType(
            "command",
            CommandGate,
            "An external command judges the output on stdin; exit 0 accepts",
            {
                "command": Option(list, required=True, description="argv list"),
                "timeout": Option(Duration, description="Uncertain after this long"),
                "uncertain_status": Option(int, description="Exit status meaning 'not sure'"),
                "field": _FIELD,
            },
        )
    )
