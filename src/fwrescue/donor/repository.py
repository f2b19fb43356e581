"""The management console's donor: a repository of packages for many boards, donated on the
same protocol as peers (``kind = console``).

At start every ``*.fwpkg`` in the repository is imported into the console's store
after :meth:`Verifier.verify_for_donation` and a full chunk check: the console only
offers what its own release keys signed. A package that fails is logged with its
reason and skipped; it never stops the console.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from fwrescue.config import DonorSettings, NetworkSettings
from fwrescue.donor.service import DonorService
from fwrescue.errors import FwRescueError
from fwrescue.image.store import PackageStore
from fwrescue.protocol.messages import DonorKind
from fwrescue.trust.keys import TrustStore
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

__all__ = ["ConsoleDonor"]

log = logging.getLogger(__name__)

# A site repository larger than this is a mistake, not a repository (bounded start-up).
MAX_REPO_PACKAGES = 1024

# The console is the fallback, not a competitor: it answers after the recipients' offer
# window (0.4 s by default) and stays quiet once any peer offered, so its egress stays
# near what peers cannot serve (bench/bench_fleet.py measures it).
CONSOLE_DEFAULTS = DonorSettings(max_uploads=16, console_offer_delay_s=0.5, suppress_after=1,
                                 egress_cap_images=1.5)


class ConsoleDonor:
    """A console that donates a repository folder of packages."""

    def __init__(self, *, repo: Path, trust: Path | Sequence[Path], state_dir: Path,
                 network: NetworkSettings, donor_id: str = "console",
                 settings: DonorSettings | None = None) -> None:
        self.repo = repo
        paths = [trust] if isinstance(trust, Path) else list(trust)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.verifier = Verifier(TrustStore.from_files(paths),
                                 RollbackStore(state_dir / "rollback.json"))
        self.store = PackageStore(state_dir / "store", verifier=self.verifier)
        self.rejected: dict[str, str] = {}
        self.service = DonorService(donor_id=donor_id, kind=DonorKind.CONSOLE, store=self.store,
                                    network=network,
                                    settings=settings or CONSOLE_DEFAULTS)

    def import_repository(self) -> int:
        """Import every package; return how many the store holds afterwards."""
        packages = sorted(self.repo.glob("*.fwpkg"))[:MAX_REPO_PACKAGES]
        for package in packages:
            try:
                self.store.import_package(self.verifier, package)
            except (FwRescueError, OSError) as e:
                self.rejected[package.name] = str(e)
                log.warning("console: package %s refused: %s", package.name, e)
        return len(self.store)

    @property
    def image_count(self) -> int:
        return len(self.store)

    @property
    def transfer_url(self) -> str | None:
        return self.service.transfer_url

    async def start(self) -> None:
        await asyncio.to_thread(self.import_repository)  # hashes every package
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
