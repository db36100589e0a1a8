"""`Rejected`: the one way a record's own problem travels from where it is found to its dead
letter. The pipeline turns every failure of one record into one of these (see
`worker.pipeline`), so the loop never sees an exception that belongs to a record."""

from __future__ import annotations


class Rejected(Exception):
    """A permanent problem with the record; `reason` is a DeadLetter reason, `error_type` the
    type of the exception behind it, where one was raised."""

    def __init__(self, reason: str, detail: str, error_type: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.error_type = error_type

    @classmethod
    def from_exception(cls, reason: str, exc: BaseException) -> Rejected:
        """An unexpected exception as a record's rejection: its type and message kept."""
        return cls(reason, f"{type(exc).__name__}: {exc}"[:2000], type(exc).__qualname__)
