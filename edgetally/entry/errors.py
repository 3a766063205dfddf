"""The entry station's errors: one root, each naming what was refused and why."""

from __future__ import annotations


class EntryError(Exception):
    """Root of the entry station's errors; ``str()`` is for the operator."""


class SheetRefused(EntryError):
    """Figures the station will not accept (a contest over its ballots, an unknown choice)."""


class StationStateError(EntryError):
    """The station's state file cannot be opened, read or written."""


class SendFailed(EntryError):
    """The edge broker did not acknowledge a batch; it stays recorded, unsent, for `entry send`."""
