"""The error hierarchy: every error Treadle raises derives from `TreadleError`.

Each class carries a stable ``code`` so tools (the CLI's ``--json`` output, the
web console) can tell errors apart without parsing messages.
"""

from __future__ import annotations


class TreadleError(Exception):
    """Base class of every error Treadle raises on purpose."""

    code = "treadle_error"


class WorkflowError(TreadleError):
    """A workflow definition is invalid (raised by ``WorkflowBuilder.build``)."""

    code = "workflow_invalid"


class DuplicateStageError(WorkflowError):
    code = "duplicate_stage"


class UnknownDependencyError(WorkflowError):
    code = "unknown_dependency"


class SelfDependencyError(WorkflowError):
    code = "self_dependency"


class CycleError(WorkflowError):
    code = "cycle"


class UnknownStageError(TreadleError, KeyError):
    """A stage name that the workflow does not define."""

    code = "unknown_stage"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownItemError(TreadleError, KeyError):
    """An item id that the store does not hold."""

    code = "unknown_item"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownTargetError(WorkflowError, UnknownStageError):
    """A per-stage setting (gate, retry budget, review policy, ...) for a stage the
    workflow does not define: a build error, and an unknown stage."""

    code = "unknown_target"


class InvalidTransitionError(TreadleError):
    """An operation that the stage's current status does not allow."""

    code = "invalid_transition"


class ReviewError(InvalidTransitionError):
    """Resolving a review on a stage that is not awaiting review."""

    code = "review_invalid"


class RetryError(InvalidTransitionError):
    """Retrying a stage that has not failed."""

    code = "retry_invalid"


class RerunError(InvalidTransitionError):
    """Re-running a stage that is running, or that has not run yet."""

    code = "rerun_invalid"


class CancelError(InvalidTransitionError):
    """Cancelling an item that has nothing left to cancel."""

    code = "cancel_invalid"


class StageOutputError(TreadleError, TypeError):
    """A stage returned something that is not an outcome, a StageOutput or None."""

    code = "stage_output_invalid"


class ArtefactError(TreadleError, ValueError):
    """An artefact that cannot be stored."""

    code = "artefact_invalid"


class ArtefactNotSerialisableError(ArtefactError):
    code = "artefact_not_serialisable"


class ArtefactTooLargeError(ArtefactError):
    code = "artefact_too_large"


class StoreError(TreadleError):
    """The state store cannot be opened or used."""

    code = "store_error"


class StoreUnavailableError(StoreError):
    """The store's server could not be reached, or it aborted the transaction (a restart,
    a dropped connection, a deadlock); nothing of that transaction was applied, so
    trying it again may succeed. Workers retry with back-off."""

    code = "store_unavailable"


class SchemaVersionError(StoreError):
    """The store's schema is newer than this version of Treadle understands."""

    code = "schema_too_new"


class LeaseLostError(TreadleError):
    """A worker wrote to an item whose lease it no longer holds (fencing)."""

    code = "lease_lost"


class PipelineFileError(TreadleError):
    """A pipeline file (treadle.toml) is invalid."""

    code = "pipeline_file_invalid"


class PluginError(TreadleError):
    """A plugin failed to load, or two plugins claim the same name."""

    code = "plugin_error"


class InputError(TreadleError, ValueError):
    """Input refused at the door: an id, item data or an edited artefact that no store
    takes back intact, or a number out of range (see `treadle_core.validation`)."""

    code = "invalid_input"


class DefinitionError(TreadleError):
    """A workflow's definition cannot be reconciled with the one the store recorded: a
    ``renamed_from`` naming a stage the store never had, or a store that holds another
    pipeline."""

    code = "definition_invalid"


class AppError(TreadleError):
    """``--app`` / ``TREADLE_APP`` does not name a `Workflow` (or a callable returning one)."""

    code = "app_invalid"
