"""StagingArea: a preallocated part file plus a crash-safe map of verified chunks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fwrescue.errors import ChunkMismatch
from fwrescue.transfer.staging import StagingArea, StagingError
from fwrescue.trust.verifier import Verifier
from tests.fakes.firmware import Signer
from tests.unit.transfer.testkit import Package, inconsistent


def chunk(package: Package, i: int) -> bytes:
    cs = package.chunk_size
    return package.data[i * cs:(i + 1) * cs]


def stage_all(staged_area: StagingArea, package: Package, indices: list[int]) -> None:
    staged = staged_area.open(package.verified)
    for i in indices:
        staged.begin_chunk(i)
        staged.write_chunk(i, chunk(package, i))
        staged.mark_verified(i)
    staged.close()


def test_new_staging_is_preallocated_and_misses_every_chunk(staging: StagingArea,
                                                            package: Package) -> None:
    with staging.open(package.verified) as staged:
        assert staged.part_path.stat().st_size == package.verified.manifest.size
        assert staged.missing() == list(range(package.verified.manifest.chunk_count))
        assert not staged.complete()


def test_restart_resumes_with_only_the_missing_chunks(tmp_path: Path,
                                                      package: Package) -> None:
    stage_all(StagingArea(tmp_path / "s"), package, [0, 1, 2, 10, 20])
    # a new area on the same directory, as after an agent restart
    again = StagingArea(tmp_path / "s").open(package.verified)
    n = package.verified.manifest.chunk_count
    assert again.missing() == [i for i in range(n) if i not in (0, 1, 2, 10, 20)]
    assert again.read_chunk(10) == chunk(package, 10)


def test_crash_without_close_keeps_marks(tmp_path: Path, package: Package) -> None:
    staged = StagingArea(tmp_path / "s").open(package.verified)
    staged.begin_chunk(3)
    staged.write_chunk(3, chunk(package, 3))
    staged.mark_verified(3)
    del staged  # no close, no sync: the process "dies"
    again = StagingArea(tmp_path / "s").open(package.verified)
    assert 3 not in again.missing()


def test_marked_chunk_whose_bytes_were_lost_is_demoted_on_reopen(tmp_path: Path,
                                                                 package: Package) -> None:
    stage_all(StagingArea(tmp_path / "s"), package, [4, 5])
    part = tmp_path / "s" / f"{package.sha256}.part"
    with open(part, "r+b") as f:  # a power cut persisted the map byte but not the data
        f.seek(5 * package.chunk_size)
        f.write(b"\0" * package.chunk_size)
    again = StagingArea(tmp_path / "s").open(package.verified)
    assert 5 in again.missing() and 4 not in again.missing()
    assert again.was_fetched(5)


def test_finalize_verifies_whole_file_and_moves_it(staging: StagingArea, package: Package,
                                                   verifier: Verifier) -> None:
    n = package.verified.manifest.chunk_count
    stage_all(staging, package, list(range(n)))
    staged = staging.open(package.verified)
    assert staged.complete()
    final = staged.finalize(verifier, package.verified)
    assert final.read_bytes() == package.data
    assert not staged.part_path.exists() and not staged.map_path.exists()


def test_finalize_of_incomplete_staging_refuses(staging: StagingArea, package: Package,
                                                verifier: Verifier) -> None:
    stage_all(staging, package, [0])
    staged = staging.open(package.verified)
    with pytest.raises(StagingError):
        staged.finalize(verifier, package.verified)
    assert staged.part_path.exists()


def test_finalize_mismatch_deletes_part_and_map(staging: StagingArea, package: Package,
                                                verifier: Verifier) -> None:
    class LyingVerifier:
        def verify_image_file(self, verified: object, path: Path) -> None:
            raise ChunkMismatch("whole image does not match")

        def verify_image_digest(self, verified: object, sha256_hex: str, size: int) -> None:
            raise ChunkMismatch("whole image does not match")

    n = package.verified.manifest.chunk_count
    stage_all(staging, package, list(range(n)))
    staged = staging.open(package.verified)
    with pytest.raises(ChunkMismatch):
        staged.finalize(LyingVerifier(), package.verified)
    assert not staged.part_path.exists() and not staged.map_path.exists()
    assert not staged.final_path.exists()


def test_staging_refuses_wrong_lengths_bad_indices_and_unwritten_marks(
        staging: StagingArea, package: Package) -> None:
    with staging.open(package.verified) as staged:
        with pytest.raises(StagingError):
            staged.write_chunk(0, b"short")
        with pytest.raises(StagingError):
            staged.write_chunk(10_000, chunk(package, 0))
        with pytest.raises(StagingError):
            staged.mark_verified(1)  # never written in this session
        assert staged.missing()[0] == 0 and staged.verified_count == 0


def test_same_image_cannot_be_opened_twice_in_one_area(staging: StagingArea,
                                                       package: Package) -> None:
    staged = staging.open(package.verified)
    with pytest.raises(StagingError):
        staging.open(package.verified)
    staged.close()
    staging.open(package.verified).close()


def test_leftover_map_for_another_layout_starts_over(
        tmp_path: Path, package_factory: Callable[..., Package]) -> None:
    small = package_factory(size=40 * 4096, chunk_size=4096)
    stage_all(StagingArea(tmp_path / "s"), small, [0, 1])
    map_path = tmp_path / "s" / f"{small.sha256}.map"
    raw = bytearray(map_path.read_bytes())
    raw[10:20] = b"garbage!!!"  # a torn or foreign header
    map_path.write_bytes(bytes(raw))
    again = StagingArea(tmp_path / "s").open(small.verified)
    assert again.missing() == list(range(40))


def test_discard_removes_everything(staging: StagingArea, package: Package) -> None:
    staged = staging.open(package.verified)
    staged.discard()
    assert not staged.part_path.exists() and not staged.map_path.exists()
    with pytest.raises(StagingError):
        staged.missing()


def test_in_order_staging_finalizes_from_its_running_digest(staging: StagingArea,
                                                            package: Package,
                                                            verifier: Verifier) -> None:
    staged = staging.open(package.verified)
    n = package.verified.manifest.chunk_count
    for i in range(n):
        staged.write_chunk(i, chunk(package, i))
        staged.mark_verified(i)
        if i == n // 2:
            assert staged.digest_ahead() == (i + 1) * package.chunk_size
    assert staged.finalize(verifier, package.verified).read_bytes() == package.data


def test_in_order_staging_of_chunks_that_verify_but_not_as_a_whole_is_refused(
        staging: StagingArea, package: Package, signer: Signer, verifier: Verifier) -> None:
    liar = inconsistent(signer, verifier, package)
    staged = staging.open(liar.verified)
    for i in range(liar.verified.manifest.chunk_count):
        Verifier.verify_chunk(liar.verified, i, chunk(liar, i))  # each chunk is fine
        staged.write_chunk(i, chunk(liar, i))
        staged.mark_verified(i)
    staged.digest_ahead()
    with pytest.raises(ChunkMismatch, match="digest"):
        staged.finalize(verifier, liar.verified)
    assert not staged.part_path.exists() and not staged.map_path.exists()
    assert not staged.final_path.exists()


def test_resumed_staging_of_chunks_that_verify_but_not_as_a_whole_is_refused(
        tmp_path: Path, package: Package, signer: Signer, verifier: Verifier) -> None:
    liar = inconsistent(signer, verifier, package)
    n = liar.verified.manifest.chunk_count
    stage_all(StagingArea(tmp_path / "s"), liar, list(range(0, n, 2)))  # out of order too
    again = StagingArea(tmp_path / "s").open(liar.verified)
    for i in again.missing():
        again.write_chunk(i, chunk(liar, i))
        again.mark_verified(i)
    with pytest.raises(ChunkMismatch, match="digest"):
        again.finalize(verifier, liar.verified)
    assert not again.part_path.exists() and not again.final_path.exists()


def test_resumed_staging_finalizes_the_exact_image(tmp_path: Path, package: Package,
                                                   verifier: Verifier) -> None:
    n = package.verified.manifest.chunk_count
    stage_all(StagingArea(tmp_path / "s"), package, [0, 1, 2, 7, n - 1])
    again = StagingArea(tmp_path / "s").open(package.verified)
    assert again.digest_ahead() == 3 * package.chunk_size  # the prefix kept from before
    for i in again.missing():
        again.write_chunk(i, chunk(package, i))
        again.mark_verified(i)
    assert again.finalize(verifier, package.verified).read_bytes() == package.data


def test_staged_bytes_altered_on_disk_before_they_were_hashed_fail_finalize(
        staging: StagingArea, package: Package, verifier: Verifier) -> None:
    staged = staging.open(package.verified)
    n = package.verified.manifest.chunk_count
    for i in range(n):
        staged.write_chunk(i, chunk(package, i))
        staged.mark_verified(i)
    with open(staged.part_path, "r+b") as f:  # storage flips a bit after the chunk check
        f.seek(n // 2 * package.chunk_size + 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ChunkMismatch):
        staged.finalize(verifier, package.verified)
    assert not staged.part_path.exists() and not staged.final_path.exists()


def test_part_file_that_changed_size_fails_finalize_on_its_size(
        staging: StagingArea, package: Package, verifier: Verifier) -> None:
    staged = staging.open(package.verified)
    for i in range(package.verified.manifest.chunk_count):
        staged.write_chunk(i, chunk(package, i))
        staged.mark_verified(i)
    with open(staged.part_path, "ab") as f:
        f.write(b"trailing junk")
    with pytest.raises(ChunkMismatch, match="size"):
        staged.finalize(verifier, package.verified)
    assert not staged.part_path.exists() and not staged.final_path.exists()


def test_digest_ahead_covers_only_the_verified_prefix(staging: StagingArea,
                                                      package: Package) -> None:
    cs = package.chunk_size
    with staging.open(package.verified) as staged:
        for i in (0, 1, 3):
            staged.write_chunk(i, chunk(package, i))
            staged.mark_verified(i)
        staged.write_chunk(2, chunk(package, 2))  # written, not yet marked
        assert staged.digest_ahead() == 2 * cs
        staged.mark_verified(2)
        assert staged.digest_ahead() == 4 * cs
    with pytest.raises(StagingError):
        staged.digest_ahead()  # closed
