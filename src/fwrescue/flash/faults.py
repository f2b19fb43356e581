"""Fault injection for flash chips: power cuts that tear blocks, failed and dropped writes,
bit flips on read-back. Seeded, so every failing case replays exactly.

:class:`FaultyChip` wraps any :class:`~fwrescue.flash.device.FlashChip`. Mutating
operations (erase, program) are numbered from 1 in the order they reach the chip;
reads are numbered separately. A :class:`FaultPlan` says what goes wrong:

* power loss at the N-th mutating op, or at the first erase/program whose range
  covers byte ``X`` (``power_loss_at_offset``, the cheap hook for a sweep over
  every erase-block boundary). The op is left *torn* and FlashPowerLoss raised:

  - erase torn at ``k``: bytes before ``k`` are erased (0xFF); the rest hold
    ``old | random`` (cells part-way to erased);
  - program torn at ``k``: bytes before ``k`` are programmed; the rest hold
    ``old & (data | random)`` (only some of the wanted 0-bits landed).

  ``k`` is ``X`` itself for an offset cut, a seeded random point for an op cut.
  The chip then stays dead (every call raises FlashPowerLoss) until
  :meth:`FaultyChip.power_restore`, modelling the BMC rebooting;
* failed writes: the op raises FlashError and changes nothing;
* silent drops: the op returns as if done and changes nothing (only a read-back
  verify catches it);
* bit flips on read: the returned bytes get one flipped bit (the cells are intact).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fwrescue.errors import FlashError, FlashPowerLoss
from fwrescue.flash.device import FlashChip, FlashGeometry

__all__ = ["FaultPlan", "FaultyChip"]


@dataclass(frozen=True)
class FaultPlan:
    """What goes wrong, and when. Op numbers are 1-based; see the module doc."""

    power_loss_at_op: int | None = None
    power_loss_at_offset: int | None = None
    fail_ops: frozenset[int] = frozenset()
    drop_ops: frozenset[int] = frozenset()
    flip_reads: frozenset[int] = frozenset()
    read_flip_probability: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.power_loss_at_op is not None and self.power_loss_at_op < 1:
            raise ValueError("power_loss_at_op is 1-based")
        if self.power_loss_at_offset is not None and self.power_loss_at_offset < 0:
            raise ValueError("power_loss_at_offset must be >= 0")
        if any(n < 1 for n in self.fail_ops | self.drop_ops | self.flip_reads):
            raise ValueError("op numbers are 1-based")
        if not 0.0 <= self.read_flip_probability <= 1.0:
            raise ValueError("read_flip_probability must be within [0, 1]")


class FaultyChip:
    """A FlashChip that misbehaves as ``plan`` says (module doc). Counters are public."""

    def __init__(self, chip: FlashChip, plan: FaultPlan = FaultPlan()) -> None:
        self._chip = chip
        self._plan = plan
        self._rng = random.Random(plan.seed)
        self._dead = False
        self._cut_done = False
        self.mutating_ops = 0
        self.read_ops = 0
        self.power_losses = 0
        self.dropped = 0
        self.failed = 0
        self.flipped = 0
        self.torn: tuple[int, int] | None = None  # (op offset, op length) of the last tear

    @property
    def geometry(self) -> FlashGeometry:
        return self._chip.geometry

    @property
    def dead(self) -> bool:
        return self._dead

    def power_restore(self) -> None:
        """Bring the chip back after a power loss; the torn contents stay as they are."""
        self._dead = False

    def read(self, offset: int, length: int) -> bytes:
        self._check_alive()
        self.read_ops += 1
        data = self._chip.read(offset, length)
        n = self.read_ops
        flip = n in self._plan.flip_reads or (
            self._plan.read_flip_probability > 0
            and self._rng.random() < self._plan.read_flip_probability
        )
        if flip and data:
            buf = bytearray(data)
            i = self._rng.randrange(len(buf))
            buf[i] ^= 1 << self._rng.randrange(8)
            self.flipped += 1
            return bytes(buf)
        return data

    def erase(self, offset: int, length: int) -> None:
        n = self._begin(offset, length)
        cut = self._cut_point(n, offset, length)
        if cut is not None:
            self._tear_erase(offset, length, cut)
        if self._misbehave(n):
            return
        self._chip.erase(offset, length)

    def program(self, offset: int, data: bytes) -> None:
        n = self._begin(offset, len(data))
        cut = self._cut_point(n, offset, len(data))
        if cut is not None:
            self._tear_program(offset, data, cut)
        if self._misbehave(n):
            return
        self._chip.program(offset, data)

    # --- internals ------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._dead:
            raise FlashPowerLoss("flash has no power")

    def _begin(self, offset: int, length: int) -> int:
        self._check_alive()
        self.mutating_ops += 1
        return self.mutating_ops

    def _misbehave(self, n: int) -> bool:
        """Raise for a failed op; True for a silently dropped one."""
        if n in self._plan.fail_ops:
            self.failed += 1
            raise FlashError("flash operation failed (injected)", op=n)
        if n in self._plan.drop_ops:
            self.dropped += 1
            return True
        return False

    def _cut_point(self, n: int, offset: int, length: int) -> int | None:
        """Relative byte where power is cut during this op, or None."""
        if self._cut_done or length == 0:
            return None
        at = self._plan.power_loss_at_offset
        if at is not None and offset <= at < offset + length:
            return at - offset
        if self._plan.power_loss_at_op == n:
            return self._rng.randrange(length)
        return None

    def _die(self, offset: int, length: int) -> FlashPowerLoss:
        self._cut_done = True
        self._dead = True
        self.power_losses += 1
        self.torn = (offset, length)
        return FlashPowerLoss("power lost during flash operation", offset=offset, length=length)

    def _noise(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def _tear_erase(self, offset: int, length: int, cut: int) -> None:
        old = self._chip.read(offset, length)
        self._chip.erase(offset, length)
        tail = len(old) - cut
        if tail:
            part = bytes(a | b for a, b in zip(old[cut:], self._noise(tail), strict=True))
            self._chip.program(offset + cut, part)
        raise self._die(offset, length)

    def _tear_program(self, offset: int, data: bytes, cut: int) -> None:
        if cut:
            self._chip.program(offset, data[:cut])
        tail = len(data) - cut
        part = bytes(a | b for a, b in zip(data[cut:], self._noise(tail), strict=True))
        self._chip.program(offset + cut, part)
        raise self._die(offset, len(data))
