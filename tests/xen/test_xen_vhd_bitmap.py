"""The VHD block bitmap the restore writer builds (vhd_of_extents marks whole bytes at
once): the same bits as marking sector by sector."""

from __future__ import annotations

import random

from vmctl_xen._backup import _mark


def _one_by_one(bitmap: bytearray, first: int, end: int) -> None:
    for s in range(first, end):
        bitmap[s // 8] |= 0x80 >> (s % 8)


def test_mark_sets_the_same_bits_as_sector_by_sector() -> None:
    rnd = random.Random(7)
    cases = [(0, 0), (0, 1), (0, 8), (3, 5), (7, 9), (8, 16), (1, 4095), (0, 4096)]
    for _ in range(2000):
        a, b = rnd.randrange(4097), rnd.randrange(4097)
        cases.append((min(a, b), max(a, b)))
    for first, end in cases:
        start = bytearray(rnd.getrandbits(8) if rnd.random() < 0.2 else 0 for _ in range(512))
        got, want = bytearray(start), bytearray(start)
        _mark(got, first, end)
        _one_by_one(want, first, end)
        assert got == want, (first, end)
