"""Who may decide a review, what it asks, and how far its votes have got.

Read from the public API only: the stage's ``wf.specs[stage].approvers`` / ``.required``
and the review's choices, form and votes (`StageState` or `PendingReview`). The page uses
it to say why its buttons are disabled; the library refuses such a decision anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from treadle_core import Workflow


@dataclass(frozen=True)
class Ballot:
    """One waiting review as the people deciding it see it."""

    approvers: tuple[str, ...] | None  # sorted; None: anyone may decide
    required: int
    votes: tuple[Mapping[str, Any], ...]
    choices: tuple[str, ...]
    form: bool

    @classmethod
    def of(
        cls,
        wf: Workflow,
        stage: str,
        *,
        choices: Sequence[str],
        form: Mapping[str, Any] | None,
        votes: Iterable[Mapping[str, Any]],
    ) -> Ballot:
        spec = wf.specs[stage]
        names = None if spec.approvers is None else tuple(sorted(spec.approvers))
        return cls(names, spec.required, tuple(votes), tuple(choices), form is not None)

    @property
    def voters(self) -> list[str]:
        return [str(v.get("reviewer") or "?") for v in self.votes]

    @property
    def tally(self) -> str | None:
        """``"1 of 2 approvals: ana"`` when it needs more than one, else None."""
        if self.required <= 1:
            return None
        done = len(self.votes)
        text = f"{done} of {self.required} approvals"
        return f"{text}: {', '.join(self.voters)}" if done else text

    @property
    def agreed(self) -> str | None:
        """The choice earlier approvals made: a later approval must make the same one."""
        for v in self.votes:
            if v.get("choice") is not None:
                return str(v["choice"])
        return None

    @property
    def editable(self) -> bool:
        """Whether an edited artefact may be approved (not with choices, a form or a
        quorum: those need the answer itself)."""
        return not self.choices and not self.form and self.required <= 1

    def refusal(self, reviewer: str | None) -> str | None:
        """Why ``reviewer`` may not decide this review, or None when they may (or when no
        name is known yet: the page asks for it)."""
        if not reviewer:
            return None
        if self.approvers is not None and reviewer not in self.approvers:
            return (
                f"Only its approvers ({', '.join(self.approvers)}) may decide this review; "
                f"you are signed in as {reviewer}."
            )
        if reviewer in self.voters:
            left = self.required - len(self.votes)
            more = f"; it waits for {left} more approval{'s' if left != 1 else ''}" if left else ""
            return f"You have approved it already (one vote each){more}."
        return None

    def asks(self, most: int = 4) -> list[str]:
        """What the review asks for, briefly: for the queue."""
        out = []
        if self.choices:
            shown = " · ".join(self.choices[:most])
            out.append("choose: " + shown + (" · …" if len(self.choices) > most else ""))
        if self.form:
            out.append("form")
        if self.tally is not None:
            out.append(f"{len(self.votes)} of {self.required} approvals")
        return out
