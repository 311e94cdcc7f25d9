"""What a queued commit report holds in memory, estimated from its encoded size and item count.

Measured with tracemalloc (Python 3.11, reports decoded as the outbox reads them back, plus the
queue's tuple and deque slot, 72 B):

    1 record, 20-char path              encoded     470 B   held       908 B  (1.9x)
    1 record, 1,000-char path           encoded   1,452 B   held     1,888 B  (1.3x)
    100 records, 100-char paths         encoded  28,966 B   held    48,281 B  (1.7x)
    2,000 records, 2-char paths         encoded 386,774 B   held   822,834 B  (2.1x)
    2,000 records, 100-char paths       encoded 577,884 B   held 1,011,933 B  (1.75x)
    1,500 records, 1,000-char paths and
      300-char errors (2 runs of ~1.1 MB) encoded 2,237,884 B held 2,635,697 B (1.2x)
    1 record, 1,000 removed 10-char paths encoded 11,462 B  held    67,964 B  (5.9x)

Strings cost their length plus ~50 B each (a str object and its slot), which short removed paths
make dominant; so the estimate is twice the encoded bytes plus 56 B a decoded item (record,
route node, removed path) plus 256 B a report. It is above every measure: 1,364 B for the first
(a typical write), 79 KB for the last, 4.5 MB for the largest run (MAX_REPORT_BYTES, 2 MiB).
"""

from __future__ import annotations

from relaysync.protocol.messages import CommitReport

ITEM_BYTES = 56  # a str or Struct object beyond its characters, and its slot in a tuple
REPORT_BYTES = 256  # the report, its tuples, the queue's Queued and deque slot (72 B)


def held_bytes(report: CommitReport, encoded_bytes: int) -> int:
    """What `report`, `encoded_bytes` long on the wire, is estimated to hold in memory."""
    return 2 * encoded_bytes + ITEM_BYTES * report.decoded_items() + REPORT_BYTES
