"""Rejections as data: the exception pure stage functions raise, and the row it becomes."""

from schemas import REJECTION_SCHEMA, fields, reasons


class Rejected(Exception):
    """A candidate judged out by a stage, with a stable reason code (schemas.reasons) and a free-text detail."""

    def __init__(self, reason: str, detail: str = ""):
        if not reasons.is_known(reason):
            raise ValueError(f"unknown reason code {reason!r}; add it to schemas/reasons.py")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # crosses process boundaries (image workers) with its code, not its message
        return (Rejected, (self.reason, self.detail))

    @property
    def stage(self) -> str:
        return reasons.stage_of(self.reason)


def rejection_row(candidate: dict, reason: str, detail: str = "") -> dict:
    """A REJECTION_SCHEMA row carrying what is needed to retry or audit the candidate without a join."""
    row = {name: candidate.get(name) for name in REJECTION_SCHEMA.names}
    row[fields.STAGE] = reasons.stage_of(reason)
    row[fields.REASON] = reason
    row[fields.DETAIL] = detail[:1000] if detail else None
    return row
