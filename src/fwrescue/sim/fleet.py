"""Build a simulated fleet on disk: a release key, signed firmware per board, BMC state.

Each node gets a folder with its flash (a raw chip file), its BMC state (trust
store, package store, installed-image record) and an :class:`AgentConfig`. With ``tls``
(the default) the fleet gets one fleet CA (``fleet-ca/``) and every node a certificate
for its id, so transfers run over mutual TLS; ``plan.network`` carries the console's
identity (``console``), each node's config its own. ``tls=False`` is a plain-HTTP fleet.
:func:`corrupt_node` then damages a node the way the field does: the reset-vector
end of its BIOS is overwritten and the BMC's own copy of the image is lost, so
only the network can heal it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fwrescue.config import (
    AgentConfig,
    DonorSettings,
    FlashSettings,
    HostSettings,
    NetworkSettings,
    RedfishSettings,
    TargetConfig,
    TimerSettings,
    TlsSettings,
)
from fwrescue.errors import ConfigError
from fwrescue.image.package import build_package
from fwrescue.image.store import PackageStore
from fwrescue.recovery.journal import Journal
from fwrescue.trust.fleet_ca_cli import CA_CERT, init_ca, issue_node
from fwrescue.trust.keys import SigningKey, TrustStore, generate_keypair
from fwrescue.trust.manifest import SignedManifest
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import Verifier

__all__ = ["FleetPlan", "NodeSpec", "Release", "build_fleet", "corrupt_node",
           "isolated_network", "member_network", "tls_toml"]

#: written into a fleet's root: only folders holding it are ever deleted by a new run
FLEET_MARKER = ".fwrescue-fleet"
# OVMF's reset vector and SEC live in the last 64 KiB of the code volume (REFERENCES.md):
# overwriting them is the smallest corruption that stops a real host from booting.
CORRUPT_BYTES = 64 * 1024


@dataclass(frozen=True)
class Release:
    """One signed firmware release for one board."""

    board: str
    version: str
    security_version: int
    package: Path
    image: Path
    signed: SignedManifest


@dataclass
class NodeSpec:
    node_id: str
    board: str
    root: Path
    flash_path: Path
    release: Release
    config: AgentConfig
    corrupted: bool = False


@dataclass
class FleetPlan:
    root: Path
    keys: Path
    signing_key: SigningKey
    boards: list[str]
    releases: dict[str, list[Release]]  # board -> releases, oldest first
    nodes: list[NodeSpec] = field(default_factory=list)
    console_repo: Path | None = None
    network: NetworkSettings = field(default_factory=NetworkSettings)
    fleet_ca: Path | None = None  # the fleet CA's folder (None: a plain-HTTP fleet)

    def newest(self, board: str) -> Release:
        return self.releases[board][-1]

    def tls_for(self, node_id: str) -> TlsSettings | None:
        """A transfer identity for ``node_id`` from the fleet CA (issued on first use,
        kept in ``tls/``); None for a plain-HTTP fleet."""
        if self.fleet_ca is None:
            return None
        prefix = self.root / "tls" / node_id
        cert, key = prefix.with_name(node_id + ".pem"), prefix.with_name(node_id + ".key")
        if not cert.exists():
            cert, key = issue_node(self.fleet_ca, node_id, prefix)
        return TlsSettings(ca=self.fleet_ca / CA_CERT, cert=cert, key=key)

    def network_for(self, node_id: str) -> NetworkSettings:
        """``plan.network`` with ``node_id``'s transfer identity."""
        return dataclasses.replace(self.network, tls=self.tls_for(node_id))


def member_network(network: NetworkSettings, node_id: str) -> NetworkSettings:
    """``network`` with a transfer identity for ``node_id`` issued by the simulated fleet
    CA that issued ``network.tls`` (its key beside its certificate, as
    :func:`build_fleet` lays it out); ``network`` itself when plain or already
    ``node_id``'s."""
    tls = network.tls
    if tls is None or tls.cert.name == f"{node_id}.pem":
        return network
    prefix = tls.cert.parent / node_id
    cert, key = prefix.with_name(node_id + ".pem"), prefix.with_name(node_id + ".key")
    if not cert.exists():
        cert, key = issue_node(tls.ca.parent, node_id, prefix)
    return dataclasses.replace(network, tls=TlsSettings(ca=tls.ca, cert=cert, key=key))


def tls_toml(tls: TlsSettings | None) -> str:
    """The config-file form of a transfer identity: a ``[tls]`` table, or the explicit
    ``[transfer] plain_http = true`` of a plain fleet (for tests that write agent files)."""
    if tls is None:
        return "[transfer]\nplain_http = true\n"
    return f'[tls]\nca = "{tls.ca}"\ncert = "{tls.cert}"\nkey = "{tls.key}"\n'


def isolated_network(rng: random.Random | None = None) -> NetworkSettings:
    """A multicast group and port of this run's own, so demos, tests and benches can run
    side by side on one machine (RFC 2365 organization-local scope 239.255/16)."""
    rng = rng or random.Random()
    return NetworkSettings(group=f"239.255.{rng.randint(1, 254)}.{rng.randint(1, 254)}",
                           port=rng.randint(20000, 60000))


def _firmware_bytes(size: int, seed: int, base: bytes | None) -> bytes:
    if base is not None:
        return base
    return random.Random(seed).randbytes(size)


def build_fleet(
    root: Path,
    *,
    nodes: int,
    boards: int,
    image_size: int = 1024 * 1024,
    base_image: bytes | None = None,
    chip_size: int | None = None,
    flash_kind: str = "file",
    host_kind: str = "virtual",
    network: NetworkSettings | None = None,
    timers: TimerSettings | None = None,
    policy: str = "newest",
    redfish: RedfishSettings | None = None,
    seed: int = 1,
    timing_scale: float = 0.0,
    chunk_size: int = 64 * 1024,
    all_newest: bool = False,
    tls: bool = True,
) -> FleetPlan:
    """Create keys, two releases per board (1.0.0 and 1.1.0), a console repository of the
    newest releases and ``nodes`` provisioned BMCs (boards assigned round-robin, versions
    alternating unless ``all_newest``). ``base_image`` (e.g. OVMF code) replaces random
    firmware bytes; ``chunk_size`` is the signed manifests' chunk size. ``tls``: a fleet
    CA and a certificate per node (and ``console``); False: plain HTTP transfers."""
    if root.exists():
        if any(root.iterdir()) and not (root / FLEET_MARKER).exists():
            raise ConfigError("refusing to replace a folder that fwrescue demo did not "
                              "create; choose an empty or new --workdir", path=str(root))
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / FLEET_MARKER).write_text("a simulated fleet; fwrescue demo may replace this folder\n")
    keys = root / "keys"
    private, _ = generate_keypair(keys, "release")
    key = SigningKey.load(private)
    trust_dir = root / "trust"
    trust_dir.mkdir(parents=True)
    shutil.copy(keys / "release.pub", trust_dir / "release.pub")
    board_names = [f"board-{chr(ord('a') + i)}" for i in range(boards)]
    plan = FleetPlan(root=root, keys=keys, signing_key=key, boards=board_names, releases={},
                     network=network or NetworkSettings())
    if tls:
        init_ca(root / "fleet-ca")
        plan.fleet_ca = root / "fleet-ca"
    plan.network = plan.network_for("console")
    releases_dir = root / "releases"
    releases_dir.mkdir()
    for b, board in enumerate(board_names):
        plan.releases[board] = []
        for r, (version, sv) in enumerate((("1.0.0", 1), ("1.1.0", 2))):
            data = bytearray(_firmware_bytes(image_size, seed * 1000 + b * 10 + r, base_image))
            # Distinct bytes per release even on a shared base image (a version string).
            tag = f"fwrescue {board} {version}".encode()
            if base_image is None:
                data[: len(tag)] = tag
            image = releases_dir / f"{board}-{version}.bin"
            image.write_bytes(bytes(data))
            package = releases_dir / f"{board}-{version}.fwpkg"
            signed = build_package(image, package, key=key, target="bios", machine_names=[board],
                                   version=version, security_version=sv,
                                   chunk_size=chunk_size)
            plan.releases[board].append(Release(board, version, sv, package, image, signed))
    repo = root / "console-repo"
    repo.mkdir()
    for board in board_names:
        shutil.copy(plan.newest(board).package, repo / plan.newest(board).package.name)
    plan.console_repo = repo
    for i in range(nodes):
        board = board_names[i % boards]
        release = plan.releases[board][1 if all_newest else (i // boards) % 2]
        plan.nodes.append(_provision(plan, f"node-{i + 1:02d}", board, release,
                                     chip_size=chip_size, flash_kind=flash_kind,
                                     host_kind=host_kind, timers=timers, policy=policy,
                                     redfish=redfish, timing_scale=timing_scale))
    return plan


def _provision(plan: FleetPlan, node_id: str, board: str, release: Release, *,
               chip_size: int | None, flash_kind: str, host_kind: str,
               timers: TimerSettings | None, policy: str, redfish: RedfishSettings | None,
               timing_scale: float) -> NodeSpec:
    node_root = plan.root / "nodes" / node_id
    state = node_root / "state"
    state.mkdir(parents=True)
    image = release.image.read_bytes()
    size = chip_size or len(image)
    flash_path = node_root / "flash.bin"
    flash_path.write_bytes(image + b"\xff" * (size - len(image)))
    verifier = Verifier(TrustStore.from_files([plan.root / "trust"]),
                        RollbackStore(state / "rollback.json"))
    store = PackageStore(state / "store")
    verified = verifier.verify_signed(release.signed, target="bios", machine_name=board)
    store.put(verified, release.image, move=False)
    Journal(state / "targets" / "bios").set_installed(release.signed.raw)
    verifier.commit_flashed(verified)
    if flash_kind == "flashrom":
        flash = FlashSettings(kind="flashrom", path=flash_path,
                              programmer=f"dummy:emulate=W25Q128FV,image={flash_path}",
                              region_size=len(image))
    else:
        flash = FlashSettings(kind="file", path=flash_path, region_size=len(image),
                              timing_chip="W25Q256JV" if timing_scale else None,
                              timing_scale=timing_scale)
    host = HostSettings(kind=host_kind, boot_timeout=60.0 if host_kind == "qemu" else 5.0)
    rack = f"rack-{(int(node_id.split('-')[1]) - 1) // 4 + 1}"
    config = AgentConfig(
        node_id=node_id, machine_name=board, state_dir=state, trust=(plan.root / "trust",),
        topology=rack, policy=policy, network=plan.network_for(node_id),
        timers=timers or TimerSettings(startup_jitter=0.3, offer_window=0.3),
        donor=DonorSettings(max_uploads=4, lease_s=30.0),
        targets=(TargetConfig(name="bios", flash=flash, host=host),),
        redfish=redfish or RedfishSettings(),
    )
    return NodeSpec(node_id=node_id, board=board, root=node_root, flash_path=flash_path,
                    release=release, config=config)


def corrupt_node(node: NodeSpec) -> None:
    """Overwrite the reset-vector end of the BIOS and drop the BMC's stored copy."""
    size = node.release.signed.manifest.size
    cut = min(CORRUPT_BYTES, size)
    with open(node.flash_path, "r+b") as f:
        f.seek(size - cut)
        f.write(os.urandom(cut))
    store = node.config.state_dir / "store"
    shutil.rmtree(store, ignore_errors=True)
    node.corrupted = True
