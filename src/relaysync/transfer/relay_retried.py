"""Files a source sent again under the seq they were journaled with, as a relay forwards them.

A source that could not read a file when its record went reads it again later and sends it
under that record's seq, with a Checkpoint of what it had sent by then (transfer/unreadable.py
`retries`): a batch that does not advance the stream. A relay's link skips what its child's
watermark covers, by seq; such a file's seq is covered, so it was skipped, and the child got the
file only at the relay's next comparison (600 s). `StreamHead` tells the two apart by where the
message is in the spool: one whose seq is at or below the last Checkpoint before it came again.
"""

from __future__ import annotations

from dataclasses import dataclass

from relaysync.protocol.messages import AnyMessage, Checkpoint


@dataclass
class StreamHead:
    """The seq of the last Checkpoint a link read from the spool: where its reading is in the
    source's stream (the spool's base where it starts reading)."""

    seq: int = 0

    def sent_again(self, message: AnyMessage, seq: int, after: int) -> bool:
        """Whether `message` (of `seq`), read next, belongs to a file the source sent again that
        a child sent up to `after` still needs: one it was not sent past yet. A child already
        past this point of the stream was sent it when its link read it, or got a later version
        (a newer record, or a comparison with our tree, which held this one by then).
        """
        head = self.seq
        if isinstance(message, Checkpoint):
            self.seq = max(self.seq, seq)
        return seq <= head and head >= after
