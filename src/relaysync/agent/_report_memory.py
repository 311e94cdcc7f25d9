"""What a queued commit report holds in memory, estimated from its encoded size and item count.

Measured with tracemalloc (Python 3.11, reports decoded as the outbox reads them back, in a
Queued in a deque; tests/unit/agent/test_report_memory.py checks these shapes and more), in
bytes, and what it held of the estimate below:

    1 record, 20-char path                  encoded       412  held       856  0.74
    1 record, 1,000-char path               encoded     1,394  held     1,836  0.59
    2,000 records, 100-char paths           encoded   573,826  held   943,619  0.72
    2,000 records, 10 CJK chars each        encoded   571,826  held 1,167,619  0.90
    10,000 removed 2-char ASCII paths       encoded    30,396  held   590,830  0.69
    10,000 removed 2-char Cyrillic paths    encoded    50,396  held   860,830  0.96
    10,000 removed 1-emoji paths            encoded    50,396  held   880,830  0.98
    10,000 removed 'd/写真_NNNN.jpg'        encoded   180,396  held 1,080,830  0.93
    10,000 removed 300-char paths           encoded 3,030,396  held 3,570,830  0.52

Strings cost their length plus ~50 B each (a str object and its slot), which short removed paths
make dominant; a non-ASCII one is a wider object (~74-80 B, and 2 or 4 B a character against
UTF-8's 2-4), so short non-ASCII paths cost most: ~86-88 B each, against 5 encoded bytes. The
estimate is twice the encoded bytes plus 80 B a decoded item (record, route node, removed path)
plus 256 B a report (with 56 B an item, the short non-ASCII paths held up to 1.33 times it). It
is above every measure: 1,250 B for a typical one-record write, 4.3 MB for a run of
MAX_REPORT_BYTES (2 MiB) of 1,000-char paths.
"""

from __future__ import annotations

from relaysync.protocol.messages import CommitReport

# A str or Struct object beyond its characters, and its slot in a tuple: a short non-ASCII str
# holds ~88 B against its 5 encoded bytes, which 2 x 5 + 80 covers
ITEM_BYTES = 80
REPORT_BYTES = 256  # the report, its tuples, the queue's Queued and deque slot (72 B)


def held_bytes(report: CommitReport, encoded_bytes: int) -> int:
    """What `report`, `encoded_bytes` long on the wire, is estimated to hold in memory."""
    return 2 * encoded_bytes + ITEM_BYTES * report.decoded_items() + REPORT_BYTES
