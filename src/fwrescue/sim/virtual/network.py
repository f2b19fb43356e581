"""The modelled network: per-node links shared by that node's transfers, latency, loss.

* **Datagrams** (the negotiation) take ``latency_s`` one way and are lost independently
  with probability ``loss``.
* **Transfers** (HTTP range requests) are fluid flows. A flow starts one round trip
  after it is asked for and moves at ``min(up / n_up, down / n_down)``: the sender's
  uplink shared equally among its flows, the receiver's downlink likewise. Rates are
  recomputed whenever a flow starts or ends on either node, and each flow reports every
  chunk as its last byte arrives. This equal-share rule is not max-min fair (bandwidth a
  flow cannot use on one side is not handed to the others), so it errs slow.
* A link **dies** with its node: every flow on it is aborted and both ends are told.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .loop import EventLoop, Timer

__all__ = ["Flow", "Link", "Network"]


class Link:
    """One node's network port: full-duplex ``up_bps`` / ``down_bps`` (bytes per second)."""

    __slots__ = ("down_bps", "flows_down", "flows_up", "name", "sent_bytes", "up_bps")

    def __init__(self, name: str, *, up_bps: float, down_bps: float) -> None:
        if up_bps <= 0 or down_bps <= 0:
            raise ValueError("link rates must be positive")
        self.name = name
        self.up_bps = up_bps
        self.down_bps = down_bps
        self.flows_up: set[Flow] = set()
        self.flows_down: set[Flow] = set()
        self.sent_bytes = 0.0  # image bytes this link has put on the wire


class Flow:
    """One transfer of consecutive chunks ``sizes`` from ``src`` to ``dst``."""

    __slots__ = ("_boundary", "_index", "_rate", "_sent", "_t", "_timer", "active", "dst",
                 "on_abort", "on_chunk", "on_done", "sizes", "src")

    def __init__(self, src: Link, dst: Link, sizes: Sequence[int],
                 on_chunk: Callable[[int], None], on_done: Callable[[], None],
                 on_abort: Callable[[], None]) -> None:
        self.src, self.dst, self.sizes = src, dst, tuple(sizes)
        self.on_chunk, self.on_done, self.on_abort = on_chunk, on_done, on_abort
        self.active = False  # moving bytes (after its first round trip)
        self._index = 0  # next chunk (position in sizes) to complete
        self._boundary = float(self.sizes[0])  # cumulative bytes at its end
        self._sent = 0.0
        self._rate = 0.0
        self._t = 0.0
        self._timer: Timer | None = None


class Network:
    """Datagram delivery and fluid transfers over :class:`Link` s, in virtual time."""

    def __init__(self, loop: EventLoop, rng: random.Random, *, latency_s: float,
                 loss: float) -> None:
        if latency_s < 0 or not 0 <= loss < 1:
            raise ValueError("latency must be >= 0 and loss in [0, 1)")
        self.loop = loop
        self.latency_s = latency_s
        self.loss = loss
        self._rng = rng
        self.datagrams_sent = 0
        self.datagrams_lost = 0

    # --- datagrams ----------------------------------------------------------------------

    def deliver(self, callback: Callable[[], None]) -> None:
        """One datagram: ``callback`` runs after the latency unless the datagram is lost."""
        self.datagrams_sent += 1
        if self.loss and self._rng.random() < self.loss:
            self.datagrams_lost += 1
            return
        self.loop.call_later(self.latency_s, callback)

    # --- transfers ----------------------------------------------------------------------

    def start_flow(self, src: Link, dst: Link, sizes: Sequence[int], *,
                   on_chunk: Callable[[int], None], on_done: Callable[[], None],
                   on_abort: Callable[[], None]) -> Flow:
        """Ask for ``sizes`` bytes; the first byte moves one round trip later."""
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError("a flow needs positive chunk sizes")
        flow = Flow(src, dst, sizes, on_chunk, on_done, on_abort)
        src.flows_up.add(flow)
        dst.flows_down.add(flow)
        flow._timer = self.loop.call_later(2 * self.latency_s, lambda: self._activate(flow))
        return flow

    def abort_flow(self, flow: Flow) -> None:
        """Stop ``flow`` without calling any of its callbacks."""
        self._remove(flow)

    def kill_link(self, link: Link) -> None:
        """The node behind ``link`` died: abort its flows and call each ``on_abort``."""
        for flow in sorted(link.flows_up | link.flows_down, key=id):
            if flow in flow.src.flows_up:
                self._remove(flow)
                flow.on_abort()

    # --- internals ----------------------------------------------------------------------

    def _activate(self, flow: Flow) -> None:
        flow.active = True
        flow._t = self.loop.now
        self._rerate(flow.src, flow.dst)

    def _remove(self, flow: Flow) -> None:
        if flow not in flow.src.flows_up:
            return
        self._advance(flow)
        flow.src.sent_bytes += flow._sent - sum(flow.sizes[: flow._index])
        flow.src.flows_up.discard(flow)
        flow.dst.flows_down.discard(flow)
        if flow._timer is not None:
            flow._timer.cancel()
        was_active, flow.active = flow.active, False
        if was_active:
            self._rerate(flow.src, flow.dst)

    def _advance(self, flow: Flow) -> None:
        if flow.active:
            now = self.loop.now
            flow._sent = min(flow._sent + flow._rate * (now - flow._t), flow._boundary)
            flow._t = now

    def _rerate(self, *links: Link) -> None:
        flows: set[Flow] = set()
        for link in links:
            flows |= link.flows_up
            flows |= link.flows_down
        for flow in sorted(flows, key=id):
            if not flow.active:
                continue
            self._advance(flow)
            up = sum(1 for f in flow.src.flows_up if f.active)
            down = sum(1 for f in flow.dst.flows_down if f.active)
            flow._rate = min(flow.src.up_bps / up, flow.dst.down_bps / down)
            self._arm(flow)

    def _arm(self, flow: Flow) -> None:
        if flow._timer is not None:
            flow._timer.cancel()
        left = max(flow._boundary - flow._sent, 0.0)
        flow._timer = self.loop.call_later(left / flow._rate, lambda: self._chunk_done(flow))

    def _chunk_done(self, flow: Flow) -> None:
        flow._sent = flow._boundary
        flow._t = self.loop.now
        position = flow._index
        flow._index += 1
        flow.src.sent_bytes += flow.sizes[position]
        last = flow._index >= len(flow.sizes)
        if last:
            flow.src.flows_up.discard(flow)
            flow.dst.flows_down.discard(flow)
            flow.active = False
            flow._timer = None
            self._rerate(flow.src, flow.dst)
        else:
            flow._boundary += flow.sizes[flow._index]
            self._arm(flow)
        flow.on_chunk(position)
        if last:
            flow.on_done()
