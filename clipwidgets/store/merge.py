"""The tiered merge policy: which adjacent segments to merge so their count stays about log N.

Segments are tiered by live rows (tier t holds FACTOR**t .. FACTOR**(t+1) - 1 rows). FACTOR adjacent
segments of one tier merge into one of the next tier, like a counter in base FACTOR, so each row is
rewritten about log_FACTOR(N / batch) times and there are at most about FACTOR - 1 segments per tier.
A segment that is mostly tombstones is rewritten alone. Only adjacent segments merge: ids stay
ascending across segments, and insertion order is kept.

A commit merges inline whatever reads at most INLINE_MERGE_BYTES. Bigger merges are paid for by
**credit**: every commit earns CREDIT_PER_BYTE times the bytes of its new segment (kept in the
manifest, capped at the store's size), and a bigger merge runs in a commit once the credit covers
it, which spends it. So the indexer needs no `compact()`: bigger merges happen at most
CREDIT_PER_BYTE times as many bytes as the commits write, the segment count stays about
7 log_8(N / batch), and the commit that runs a big merge takes its time (seconds per GB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["CREDIT_PER_BYTE", "DEAD_SHARE", "FACTOR", "INLINE_MERGE_BYTES", "plan_merge", "tier"]

FACTOR = 8
INLINE_MERGE_BYTES = 64 << 20  # a commit merges inline only when the merge reads at most this much
CREDIT_PER_BYTE = FACTOR  # measured by simulation: 8 keeps 10M rows in ~7 segments per tier; 1-2 starve
DEAD_SHARE = 0.5  # a segment with at least this share of tombstones is rewritten alone


def tier(rows: int) -> int:
    return 0 if rows < FACTOR else int(math.log(rows, FACTOR) + 1e-9)


def plan_merge(live: Sequence[int], total: Sequence[int], nbytes: Sequence[int], *,
               budget: float) -> tuple[int, int] | None:
    """The next window (start, stop) of segments to merge, or None.

    `live`, `total` and `nbytes` are each segment's live rows, rows and file bytes; only windows whose
    files add up to at most `budget` bytes are chosen.
    """
    def affordable(start: int, stop: int) -> bool:
        return sum(nbytes[start:stop]) <= budget

    tiers = [tier(rows) for rows in live]
    for start in range(len(live)):
        mostly_dead = live[start] == 0 or (total[start] and 1 - live[start] / total[start] >= DEAD_SHARE)
        if mostly_dead and affordable(start, start + 1):
            return start, start + 1
    for start in range(len(live) - FACTOR + 1):
        if len(set(tiers[start:start + FACTOR])) == 1 and affordable(start, start + FACTOR):
            return start, start + FACTOR
    if len(live) > FACTOR * (max(tiers, default=0) + 1):  # tombstones left tiers unsorted: merge a small pair
        pairs = sorted(range(len(live) - 1), key=lambda i: live[i] + live[i + 1])
        for start in pairs:
            if affordable(start, start + 2):
                return start, start + 2
    return None
