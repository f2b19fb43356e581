"""The sans-IO swarm scheduler in virtual time: no sockets, no clock, seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fwrescue.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from fwrescue.transfer.swarm import ChunkRequest, SwarmLimits, SwarmScheduler


def scheduler(
    chunk_count: int = 16,
    *,
    seed: int = 1,
    verified: tuple[int, ...] = (),
    **limits: int | bool,
) -> SwarmScheduler:
    return SwarmScheduler(
        chunk_count=chunk_count,
        verified=verified,
        rng=random.Random(seed),
        limits=SwarmLimits(**limits),  # type: ignore[arg-type]
    )


def serve(s: SwarmScheduler, request: ChunkRequest, now: float = 0.0) -> None:
    """The donor sends every chunk of the request and each one verifies."""
    for index in request.indices:
        s.chunk_verified(request, index, now)
    s.request_ended(request, now)


def assert_no_chunk_twice(requests: list[ChunkRequest]) -> None:
    counts = Counter(i for r in requests for i in r.indices)
    assert all(c == 1 for c in counts.values()), counts


def run_to_completion(s: SwarmScheduler, *, now: float = 0.0, rounds: int = 10_000) -> None:
    for _ in range(rounds):
        if s.complete:
            return
        batch = s.next_requests(now)
        assert batch, f"stuck with {s.missing()} missing"
        for request in batch:
            serve(s, request, now)
    raise AssertionError("did not complete")


# --- limits and requests ------------------------------------------------------------


@pytest.mark.parametrize(
    "field", [{"max_donors": 0}, {"requests_per_donor": 0}, {"max_run": 0}, {"max_run": 65}]
)
def test_limits_out_of_range_are_a_config_error(field: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        SwarmLimits(**field)  # type: ignore[arg-type]


def test_limits_refuse_a_bool_where_a_count_is_expected() -> None:
    with pytest.raises(ConfigError):
        SwarmLimits(max_donors=True)


def test_a_backwards_chunk_run_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        ChunkRequest(donor_id="d", first=3, last=2)


def test_a_chunk_count_of_zero_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        SwarmScheduler(chunk_count=0, rng=random.Random(0))


# --- assignment -----------------------------------------------------------------------


def test_chunks_are_spread_across_donors_in_aligned_runs_and_never_twice() -> None:
    s = scheduler(64, max_donors=4, requests_per_donor=2, max_run=4)
    for name in "abcd":
        s.add_donor(name, None, 0.0)
    batch = s.next_requests(0.0)
    assert len(batch) == 8  # every slot of every donor
    assert Counter(r.donor_id for r in batch) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert_no_chunk_twice(batch)
    for r in batch:  # one run inside one aligned block of max_run chunks
        assert r.first // 4 == r.last // 4
    assert s.next_requests(0.0) == []  # every slot is busy


def test_a_donor_gets_a_new_request_only_when_its_slot_frees() -> None:
    s = scheduler(16, requests_per_donor=1)
    s.add_donor("a", None, 0.0)
    (first,) = s.next_requests(0.0)
    assert s.next_requests(0.0) == []
    serve(s, first)
    (second,) = s.next_requests(1.0)
    assert second.donor_id == "a"
    assert set(first.indices).isdisjoint(second.indices)


def test_transfer_completes_and_missing_empties() -> None:
    s = scheduler(37, max_run=4)
    s.add_donor("a", None, 0.0)
    s.add_donor("b", None, 0.0)
    assert s.missing() == list(range(37))
    run_to_completion(s)
    assert s.complete
    assert s.missing() == []
    assert s.refetched == 0
    assert not s.wants_donor()
    assert s.next_requests(0.0) == []


def test_chunks_verified_before_a_restart_are_never_requested() -> None:
    s = scheduler(12, verified=(0, 1, 2, 3, 8))
    s.add_donor("a", None, 0.0)
    asked: set[int] = set()
    while not s.complete:
        for r in s.next_requests(0.0):
            asked.update(r.indices)
            serve(s, r)
    assert asked == set(range(12)) - {0, 1, 2, 3, 8}


def test_a_verified_index_outside_the_image_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        SwarmScheduler(chunk_count=4, verified=[4], rng=random.Random(0))


# --- donors coming and going ------------------------------------------------------------


def test_a_vanished_donor_gives_its_in_flight_chunks_back() -> None:
    s = scheduler(8, max_run=4)
    s.add_donor("a", None, 0.0)
    (lost,) = s.next_requests(0.0)
    s.chunk_verified(lost, lost.first, 0.5)  # one chunk arrived before the donor died
    s.drop_donor("a", "connection reset", 1.0)
    assert s.active_donors == frozenset()
    assert s.dropped == {"a": "connection reset"}
    assert s.wants_donor()
    s.add_donor("b", None, 2.0)
    # The unresolved chunks of the lost request are missing again; the verified one is not.
    assert lost.first not in s.missing()
    assert set(lost.indices) - {lost.first} <= set(s.missing())
    run_to_completion(s, now=2.0)
    assert s.refetched == len(lost.indices) - 1


def test_a_dropped_donor_stays_dropped() -> None:
    s = scheduler(8)
    s.add_donor("a", None, 0.0)
    s.drop_donor("a", "timeout", 1.0)
    s.add_donor("a", None, 2.0)  # it offers again: refused
    assert s.active_donors == frozenset()
    assert s.next_requests(2.0) == []
    s.drop_donor("a", "other", 3.0)
    assert s.dropped["a"] == "timeout"


def test_a_new_donor_mid_transfer_takes_free_chunks_only() -> None:
    s = scheduler(32, max_run=4, requests_per_donor=2)
    s.add_donor("a", None, 0.0)
    early = s.next_requests(0.0)
    serve(s, early[0])
    held = set(early[1].indices)  # still in flight at a
    s.add_donor("b", None, 1.0)
    late = s.next_requests(1.0)
    assert {r.donor_id for r in late} == {"a", "b"}
    for r in late:
        assert held.isdisjoint(r.indices)
        assert set(early[0].indices).isdisjoint(r.indices)
    assert_no_chunk_twice([early[1], *late])


def test_request_ended_is_idempotent() -> None:
    s = scheduler(8, max_run=8)
    s.add_donor("a", None, 0.0)
    (r,) = s.next_requests(0.0)
    s.request_ended(r, 1.0)
    s.request_ended(r, 1.0)
    assert s.in_flight == 0
    assert sorted(s.missing()) == list(range(8))


def test_adding_a_donor_past_max_donors_or_twice_is_misuse() -> None:
    s = scheduler(8, max_donors=2)
    s.add_donor("a", None, 0.0)
    with pytest.raises(LocalProtocolError):
        s.add_donor("a", None, 0.0)
    s.add_donor("b", None, 0.0)
    assert not s.wants_donor()
    with pytest.raises(LocalProtocolError):
        s.add_donor("c", None, 0.0)
    assert s.active_donors == {"a", "b"}


# --- partial donors, rarest first ---------------------------------------------------------


def test_a_partial_donor_is_asked_only_for_chunks_it_holds() -> None:
    s = scheduler(16, max_run=4)
    s.add_donor("p", [1, 2, 9], 0.0)
    asked: set[int] = set()
    for _ in range(5):
        for r in s.next_requests(0.0):
            assert r.donor_id == "p"
            asked.update(r.indices)
            serve(s, r)
    assert asked == {1, 2, 9}
    assert not s.complete


def test_rarest_first_a_complete_donor_is_spent_on_what_no_partial_holds() -> None:
    # Partials p and q together hold chunks 0..7; only the complete donor c has 8..15.
    s = scheduler(16, max_run=1, requests_per_donor=4, max_donors=3)
    s.add_donor("p", range(0, 8), 0.0)
    s.add_donor("q", range(0, 6), 0.0)
    s.add_donor("c", None, 0.0)
    by_donor: dict[str, set[int]] = {}
    for r in s.next_requests(0.0):
        by_donor.setdefault(r.donor_id, set()).update(r.indices)
    assert by_donor["c"] <= set(range(8, 16))  # rarity 0: only c holds them
    assert len(by_donor["c"]) == 4
    # p's rarest chunks are 6 and 7 (only p holds them); it takes both first.
    assert {6, 7} <= by_donor["p"]


def test_rarest_first_orders_a_partial_donors_picks_by_rarity() -> None:
    s = scheduler(12, max_run=1, requests_per_donor=1, max_donors=4, endgame=False)
    s.add_donor("x", range(12), 0.0)  # holds all, partial
    s.add_donor("y", range(0, 8), 0.0)
    s.add_donor("z", range(0, 4), 0.0)
    # Occupy y and z with their own rarest so only x asks.
    order: list[int] = []
    for _ in range(12):
        batch = s.next_requests(0.0)
        for r in batch:
            if r.donor_id == "x":
                order.append(r.first)
                serve(s, r)
    # x's rarity classes: 8..11 (only x) before 4..7 (x, y) before 0..3 (x, y, z).
    rank = {i: (0 if i >= 8 else 1 if i >= 4 else 2) for i in range(12)}
    assert [rank[i] for i in order] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # y, z hold one each


def test_equally_rare_chunks_are_chosen_at_random_so_recipients_differ() -> None:
    firsts = set()
    for seed in range(8):
        s = scheduler(64, seed=seed, max_run=4)
        s.add_donor("console", None, 0.0)
        (r,) = s.next_requests(0.0)
        firsts.add(r.first)
    assert len(firsts) >= 4


def test_a_growing_have_map_makes_new_chunks_available() -> None:
    s = scheduler(8, max_run=4)
    s.add_donor("p", [0], 0.0)
    (r,) = s.next_requests(0.0)
    serve(s, r)
    assert s.next_requests(1.0) == []
    s.update_have("p", [0, 4, 5], 2.0)
    (r2,) = s.next_requests(2.0)
    assert (r2.first, r2.last) == (4, 5)


def test_a_have_map_that_shrinks_is_a_lie_and_drops_the_donor() -> None:
    s = scheduler(8, max_run=4)
    s.add_donor("p", [0, 1, 2], 0.0)
    (r,) = s.next_requests(0.0)
    s.update_have("p", [0, 1], 1.0)
    assert s.dropped == {"p": "have-map shrank"}
    assert "p" not in s.active_donors
    assert set(r.indices) <= set(s.missing())  # its in-flight chunks went back
    s.add_donor("c", None, 2.0)
    run_to_completion(s, now=2.0)


def test_a_complete_donor_whose_have_map_shrinks_is_dropped() -> None:
    s = scheduler(8)
    s.add_donor("c", None, 0.0)
    s.update_have("c", range(7), 1.0)
    assert s.dropped == {"c": "have-map shrank"}


def test_a_have_index_outside_the_image_is_refused_and_changes_nothing() -> None:
    s = scheduler(8)
    with pytest.raises(RemoteProtocolError):
        s.add_donor("p", [1, 8], 0.0)
    assert s.active_donors == frozenset()
    s.add_donor("p", [1], 0.0)
    with pytest.raises(RemoteProtocolError):
        s.update_have("p", [1, -1], 1.0)
    assert s.active_donors == {"p"}
    assert s.dropped == {}


def test_a_bad_chunk_drops_the_donor_and_the_others_finish() -> None:
    s = scheduler(16, max_run=4)
    s.add_donor("liar", None, 0.0)
    s.add_donor("good", None, 0.0)
    batch = s.next_requests(0.0)
    bad = next(r for r in batch if r.donor_id == "liar")
    s.chunk_failed(bad, bad.first, "sha256 mismatch", 0.5)
    assert s.dropped["liar"].startswith(f"bad chunk {bad.first}")
    assert s.active_donors == {"good"}
    for r in batch:
        if r.donor_id == "good":
            serve(s, r)
    run_to_completion(s, now=1.0)
    assert s.complete


def test_the_seed_of_last_resort_serves_only_what_no_peer_holds() -> None:
    s = scheduler(16, max_run=4, requests_per_donor=4)
    s.add_donor("console", None, 0.0, last_resort=True)
    s.add_donor("peer", range(0, 8), 0.0)
    got: dict[str, set[int]] = {"console": set(), "peer": set()}
    for r in s.next_requests(0.0):
        got[r.donor_id].update(r.indices)
    assert got["console"] and got["console"] <= set(range(8, 16))
    assert got["peer"] <= set(range(8))
    s.add_donor("healthy", None, 1.0)  # a complete peer: the console is not needed
    assert all(r.donor_id == "healthy" for r in s.next_requests(1.0))


# --- endgame ------------------------------------------------------------------------------


def test_endgame_duplicates_the_last_chunks_at_most_twice() -> None:
    s = scheduler(4, max_run=4, requests_per_donor=1, max_donors=3)
    s.add_donor("slow", None, 0.0)
    (slow,) = s.next_requests(0.0)
    assert (slow.first, slow.last) == (0, 3)
    s.add_donor("fast", None, 1.0)
    s.add_donor("spare", None, 1.0)
    copies = s.next_requests(1.0)
    assert len(copies) == 2 and all(r.first == r.last for r in copies)
    assert len({r.first for r in copies}) == 2  # two different chunks, one copy each
    for r in copies:
        serve(s, r, 2.0)
    assert s.refetched == 2
    assert not s.superfluous(slow)


def test_without_endgame_nothing_is_asked_twice() -> None:
    s = scheduler(4, max_run=4, endgame=False, max_donors=2)
    s.add_donor("slow", None, 0.0)
    s.next_requests(0.0)
    s.add_donor("fast", None, 1.0)
    assert s.next_requests(1.0) == []
    assert s.refetched == 0


def test_a_late_copy_of_a_verified_chunk_changes_nothing() -> None:
    s = scheduler(1, max_donors=2)
    s.add_donor("a", None, 0.0)
    (a,) = s.next_requests(0.0)
    s.add_donor("b", None, 0.0)
    (b,) = s.next_requests(0.0)
    serve(s, b)
    assert s.complete and s.superfluous(a)
    s.chunk_verified(a, 0, 1.0)
    s.request_ended(a, 1.0)
    assert s.complete and s.in_flight == 0


def test_verifying_an_index_outside_the_request_is_misuse() -> None:
    s = scheduler(8, max_run=2)
    s.add_donor("a", None, 0.0)
    (r,) = s.next_requests(0.0)
    with pytest.raises(LocalProtocolError):
        s.chunk_verified(r, r.last + 1, 0.0)


# --- a randomized swarm in virtual time -----------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_random_swarm_never_double_assigns_outside_endgame_and_completes(seed: int) -> None:
    """Donors appear, grow, lie, vanish and serve bad chunks at random; the invariant
    holds after every step and the image completes from a complete donor at the end."""
    rng = random.Random(seed)
    n = rng.randint(1, 80)
    s = scheduler(n, seed=seed, max_donors=4, requests_per_donor=2, max_run=rng.randint(1, 6))
    outstanding: list[ChunkRequest] = []
    names = iter(f"d{i}" for i in range(10_000))
    haves: dict[str, set[int]] = {}
    for step in range(400):
        now = float(step)
        if s.wants_donor() and rng.random() < 0.3:
            name = next(names)
            if rng.random() < 0.5:
                haves[name] = set(rng.sample(range(n), rng.randint(0, n)))
                s.add_donor(name, haves[name], now)
            else:
                s.add_donor(name, None, now)
        active = sorted(s.active_donors)
        if active and rng.random() < 0.05:
            s.drop_donor(rng.choice(active), "vanished", now)
        partial = [d for d in active if d in haves and d in s.active_donors]
        if partial and rng.random() < 0.2:
            d = rng.choice(partial)
            haves[d] |= set(rng.sample(range(n), rng.randint(0, n)))
            s.update_have(d, haves[d], now)
        outstanding = [r for r in outstanding if r.donor_id in s.active_donors]
        before = Counter(i for r in outstanding for i in r.indices)
        fresh = s.next_requests(now)
        outstanding.extend(fresh)
        copies = Counter(i for r in outstanding for i in r.indices)
        if any(copies[i] > 1 and copies[i] > before[i] for r in fresh for i in r.indices):
            # A copy is made in endgame only: every missing chunk is in flight (pending
            # never grows inside next_requests), and never more than 2 copies.
            assert set(s.missing()) <= set(copies)
        assert max(copies.values(), default=0) <= 2
        if outstanding and rng.random() < 0.7:
            r = outstanding.pop(rng.randrange(len(outstanding)))
            if rng.random() < 0.03:
                s.chunk_failed(r, r.first, "bad", now)
            else:
                for i in r.indices:
                    if rng.random() < 0.9:
                        s.chunk_verified(r, i, now)
                s.request_ended(r, now)
        if s.complete:
            break
    for r in outstanding:
        s.request_ended(r, 500.0)
    for d in sorted(s.active_donors):
        s.drop_donor(d, "done", 500.0)
    if not s.complete:
        s.add_donor("final", None, 501.0)
        run_to_completion(s, now=501.0)
    assert s.complete and s.missing() == [] and s.in_flight == 0


def test_a_removed_donor_gives_chunks_back_and_may_come_back() -> None:
    s = scheduler(8, max_run=4)
    s.add_donor("p", [0, 1], 0.0)
    (r,) = s.next_requests(0.0)
    s.remove_donor("p", 1.0)
    assert s.active_donors == frozenset() and s.dropped == {}
    assert set(r.indices) <= set(s.missing())
    s.add_donor("p", [0, 1, 2], 2.0)
    (again,) = s.next_requests(2.0)
    assert (again.first, again.last) == (0, 2)


def test_unavailable_counts_what_only_the_seed_of_last_resort_could_give() -> None:
    s = scheduler(8, max_run=1, requests_per_donor=8)
    s.add_donor("console", None, 0.0, last_resort=True)
    assert s.unavailable() == 8
    s.add_donor("p", [0, 1, 2], 0.0)
    assert s.unavailable() == 5
    for r in s.next_requests(0.0):  # the console takes what p lacks
        if r.donor_id == "console":
            serve(s, r)
    assert s.unavailable() == 0
    s.add_donor("full", None, 1.0)
    assert s.unavailable() == 0
