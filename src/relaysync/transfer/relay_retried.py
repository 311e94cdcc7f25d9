"""Files a source sent again under the seq they were journaled with, as a relay forwards them.

A source that could not read a file when its record went reads it again later and sends it
under that record's seq, between a Checkpoint marked `again` and the next one (transfer/
unreadable.py `retries`): a batch that does not advance the stream. A relay's link skips what
its child's watermark covers, by seq; such a file's seq is covered, so it was skipped, and the
child got the file only at the relay's next comparison (600 s). `StreamHead` forwards what the
source marked so. Nothing else below a child's watermark goes: our parent replays what we
spooled but had not committed (we refused a batch, or were killed before the Checkpoint), and
the child has it already (its place in the spool, after a Checkpoint past it, once told the two
apart wrongly: a 3 MiB file committed on the child once per replay, a replayed delta refused).
A source of the release before the mark sends retries unmarked: they reach a relay's children
at its next comparison, as they did before.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaysync.protocol.messages import AnyMessage, Checkpoint


@dataclass
class StreamHead:
    """The seq of the last Checkpoint a link read from the spool: where its reading is in the
    source's stream (the spool's base where it starts reading); and whether what it reads now
    is files the source sent again (after a Checkpoint marked `again`)."""

    seq: int = 0
    again: bool = False

    def sent_again(self, message: AnyMessage, seq: int, after: int) -> bool:
        """Whether `message` (of `seq`), read next, belongs to a file the source sent again that
        a child sent up to `after` still needs: one it was not sent past yet (the marks around
        them included, so that a relay below tells them too). A child already past this point
        of the stream was sent it when its link read it, or got a later version (a newer
        record, or a comparison with our tree, which held this one by then).
        """
        head, again = self.seq, self.again
        if isinstance(message, Checkpoint):
            self.seq = max(self.seq, seq)
            self.again = message.again
            again = again or message.again
        return again and seq <= head and head >= after
