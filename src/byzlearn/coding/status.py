"""What a DRACO decoder says about a round: decoded, errors located, or untrustworthy."""

from __future__ import annotations

from dataclasses import dataclass

OK, CORRECTED, DETECTED = "ok", "corrected", "detected"


@dataclass
class DecodeStatus:
    """``status``: ``ok`` (no error seen), ``corrected`` (``located`` erroneous messages found and
    removed, result exact) or ``detected`` (more errors than the code corrects: the result must not
    be used). ``located``: erroneous messages identified (workers for cyclic, replicas outvoted for
    repetition); ``failed_groups``: repetition groups without a majority."""

    status: str = OK
    located: int = 0
    failed_groups: int = 0

    @property
    def trusted(self) -> bool:
        return self.status != DETECTED
