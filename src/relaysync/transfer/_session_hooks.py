"""The receiver session's hooks: what its mixins (file data, tree ops) call back into."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relaysync.protocol.messages import CommitRecord


class SessionHooks:
    """The `ReceiverSession` methods that `FileReceiver` and `TreeOps` call (declared for the
    type checker only: the session defines them)."""

    if TYPE_CHECKING:

        def flush(self) -> None: ...

        def _note(self, seq: int) -> None: ...

        def _record(
            self,
            seq: int,
            op: str,
            path: str,
            *,
            size: int = 0,
            wire: int = 0,
            started: float,
            error: str = "",
            changed_at: float = 0.0,
        ) -> CommitRecord: ...

        def _refuse(
            self, seq: int, op: str, path: str, detail: str, started: float, changed_at: float = 0.0
        ) -> None: ...

        def _os_failed(
            self,
            seq: int,
            op: str,
            path: str,
            exc: OSError,
            started: float,
            changed_at: float = 0.0,
        ) -> None: ...
