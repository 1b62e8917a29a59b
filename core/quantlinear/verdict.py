"""A kernel's answer to "can you run this layer?": a yes, or a no with a reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """``bool(verdict)`` is ``ok`` (unlike a ``(ok, reason)`` tuple, which is always truthy).

    A rejection always carries a human-readable reason; an acceptance may carry a note.
    """

    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.ok and not self.reason:
            raise ValueError("a rejecting Verdict needs a reason")

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls, note: str = "") -> "Verdict":
        return cls(True, note)

    @classmethod
    def no(cls, reason: str) -> "Verdict":
        return cls(False, reason)

    def __str__(self) -> str:
        return ("ok" if self.ok else "no") + (f": {self.reason}" if self.reason else "")
