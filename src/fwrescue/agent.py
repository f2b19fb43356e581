"""The agent: the composition root that builds one BMC's parts from its config and runs them.

One agent is recipient and donor at once. It owns, per agent: the trust store and
rollback floors, the package store (what it can donate), the datagram link, the
donor service (protocol responder + transfer server) and optionally the Redfish
service; per target: the flash, the host (BIOS only), the predetermined-source
ladder, the network fetcher and a :class:`RecoveryEngine`.

Nothing else in fwrescue constructs concrete parts; everything below is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwrescue.agent_policy import AgentFleetPolicy
from fwrescue.config import AgentConfig, TargetConfig
from fwrescue.donor import DonorService
from fwrescue.errors import FlashPowerLoss
from fwrescue.flash.device import Flash
from fwrescue.hardware import build_flash, build_host
from fwrescue.host.base import FlashMode, Host
from fwrescue.image.store import PackageStore
from fwrescue.protocol.messages import DonorKind, Report, ReportOutcome
from fwrescue.protocol.policy import get_policy
from fwrescue.recovery.engine import EngineSettings, OperationResult, RecoveryEngine
from fwrescue.recovery.journal import Journal
from fwrescue.recovery.network import NetworkRecovery
from fwrescue.recovery.ports import OperationEvent
from fwrescue.sources.directory import WatchedDirectory
from fwrescue.sources.ladder import SourceLadder
from fwrescue.transfer.partial import PartialImages
from fwrescue.transport.link import open_link
from fwrescue.transport.shared import SharedLink
from fwrescue.trust.keys import TrustStore
from fwrescue.trust.rollback import RollbackStore
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = ["Agent", "TargetRuntime"]

log = logging.getLogger(__name__)

# How often removable-media folders are polled (a USB stick is noticed within ~2 polls).
MEDIA_POLL_S = 1.0


@dataclass
class TargetRuntime:
    config: TargetConfig
    flash: Flash
    host: Host | None
    engine: RecoveryEngine


@dataclass
class _Listeners:
    callbacks: list[Callable[[OperationEvent], None]] = field(default_factory=list)

    def __call__(self, event: OperationEvent) -> None:
        for callback in list(self.callbacks):
            try:
                callback(event)
            except Exception:  # a display or Redfish bug must never stop a recovery
                log.exception("event listener failed")


class Agent:
    """One BMC's fwrescue: start() wires and runs everything, stop() tears it down."""

    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self.events = _Listeners()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        floors = dict(config.fleet_floors)
        self.rollback = RollbackStore(state / "rollback.json")
        self.verifier = Verifier(TrustStore.from_files(config.trust), self.rollback,
                                 max_image_size=config.max_image_size,
                                 fleet_floor=lambda target: floors.get(target, 0))
        # the verifier re-checks every envelope found on disk (a tampered store is junk)
        self.store = PackageStore(state / "store", verifier=self.verifier,
                                  max_image_size=config.max_image_size)
        # One group socket for the donor and every recovery session (storm control: each
        # socket on the group receives every datagram), and the images being received,
        # whose verified chunks the donor serves onward (partial donor).
        self.link = SharedLink(lambda: open_link(config.network))
        self.partial = PartialImages()
        self.donor = DonorService(donor_id=config.node_id, kind=DonorKind.PEER, store=self.store,
                                  network=config.network, settings=config.donor,
                                  topology=config.topology, partial=self.partial,
                                  link_factory=self.link.attach)
        self.fetchers: dict[str, NetworkRecovery] = {}
        options = dict(config.policy_options)
        # The pin travels in the selection context; the policy reads it from there.
        self._pinned: str | None = options.pop("pinned_version", None)
        self.policy = get_policy(config.policy, **options)
        self.targets: dict[str, TargetRuntime] = {}
        # the signed fleet policy from the console (agent_policy.py)
        self.fleet_policy = AgentFleetPolicy(self, self.rollback)
        self.results: dict[str, OperationResult] = {}
        self.redfish_url: str | None = None
        self._redfish_runner: Any = None
        self._redfish_backend: Any = None
        self._announcer: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, *, run_startup_checks: bool = True) -> None:
        """Build and validate every target first, then start donating and Redfish, then run
        the start-up checks (interrupted operations, integrity) in the background. If any
        step fails, whatever already started is stopped again before the error propagates."""
        try:
            for target in self.config.targets:
                self.targets[target.name] = self._build_target(target)
            self.fleet_policy.load()
            if self.config.donor.enabled:
                await self.donor.start()
            if self.config.redfish.enabled:
                await self._start_redfish()
        except BaseException:
            await self.stop()
            raise
        for runtime in self.targets.values():
            if run_startup_checks:
                self._tasks.append(asyncio.create_task(self._startup(runtime)))
            if runtime.config.check_interval_s > 0:
                self._watchers.append(asyncio.create_task(self._periodic(runtime)))
            for spec in runtime.config.sources:
                if spec.get("kind") == "usb":
                    self._watchers.append(asyncio.create_task(
                        self._watch_media(runtime, Path(str(spec["path"])))))
        self.fleet_policy.start_baseline_updates()

    async def stop(self) -> None:
        for task in self._tasks + self._watchers:
            task.cancel()
        for task in self._tasks + self._watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._watchers.clear()
        await self.fleet_policy.stop()
        if self._announcer is not None:
            await self._announcer.stop()
            self._announcer = None
        if self._redfish_runner is not None:
            await self._redfish_runner.cleanup()
            self._redfish_runner = None
        if self._redfish_backend is not None:
            await self._redfish_backend.close()
        await self.donor.stop()
        for runtime in self.targets.values():
            if runtime.host is not None:
                await runtime.host.close()

    async def wait_idle(self) -> None:
        """Wait for the start-up checks (and the recoveries they began) to finish."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- construction -------------------------------------------------------------------

    def _build_target(self, target: TargetConfig) -> TargetRuntime:
        state = self.config.state_dir / "targets" / target.name
        flash = build_flash(target.flash, workdir=state / "flash")
        engine_holder: list[RecoveryEngine] = []
        host = build_host(target, workdir=state / "host", flash_path=target.flash.path,
                          firmware_ok=lambda: engine_holder[0].integrity_now().ok)
        network = None
        if target.network:
            network = NetworkRecovery(
                node_id=self.config.node_id, topology=self.config.topology,
                network=self.config.network, timers=self.config.timers, policy=self.policy,
                verifier=self.verifier, staging_dir=state / "staging",
                pinned_version=self._pinned, rng=self._rng, link_factory=self.link.attach,
                partial=self.partial, ingress_bps=self.config.donor.rate_limit_bps or None)
            self.fetchers[target.name] = network
        engine = RecoveryEngine(
            EngineSettings(
                target=target.name, machine_name=self.config.machine_name,
                node_id=self.config.node_id,
                flash_mode=FlashMode(target.host.flash_mode),
                boot_timeout=target.host.boot_timeout),
            flash=flash, host=host, verifier=self.verifier, store=self.store,
            journal=Journal(state), workdir=state / "work",
            locator=SourceLadder.from_specs(target.sources, self.verifier, flash=flash)
            if target.sources else None,
            network=network, events=self.events,
            on_boot_checked=lambda verified, booted: self._report_boot(target.name, verified,
                                                                      booted))
        engine_holder.append(engine)
        return TargetRuntime(config=target, flash=flash, host=host, engine=engine)

    def _report_boot(self, target: str, verified: VerifiedManifest, booted: bool) -> None:
        """REPORT the boot check to the fleet (the circuit breaker's input)."""
        outcome = ReportOutcome.BOOTED if booted else ReportOutcome.BOOT_FAILED
        report = Report(xid=self._rng.getrandbits(32), recipient_id=self.config.node_id,
                        target=target, manifest_digest=verified.digest, outcome=outcome)
        if not self.donor.send_report(report):
            log.info("%s: boot report not sent (donor service off)", self.config.node_id)

    async def _start_redfish(self) -> None:
        from fwrescue.agent_redfish import AgentBackend, redfish_accounts
        from fwrescue.redfish.app import create_redfish_app, start_redfish_server
        from fwrescue.redfish.settings import RedfishSettings as ServiceSettings

        rf = self.config.redfish
        state = self.config.state_dir / "redfish"
        settings = ServiceSettings(
            accounts=redfish_accounts(rf.users), upload_dir=state / "uploads",
            # the package adds its manifest (at most 2 MiB) and tar headers to the image
            max_image_size=self.config.max_image_size + 4 * 1024 * 1024)
        self._redfish_backend = AgentBackend(self)
        app = create_redfish_app(self._redfish_backend, settings)
        self._redfish_runner, self.redfish_url = await start_redfish_server(
            app, rf.host, rf.port, rf.tls, state)
        if rf.ssdp_group is not None:  # DSP0266 discovery: the console finds this agent
            from fwrescue.redfish.ssdp import SsdpAnnouncer

            self._announcer = SsdpAnnouncer(
                service_root=f"{self.redfish_url}/redfish/v1/",
                uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"fwrescue:{self.config.node_id}")),
                group=rf.ssdp_group, port=rf.ssdp_port, interface=rf.host,
                interval_s=rf.ssdp_interval_s)
            self._announcer.start()

    async def _startup(self, runtime: TargetRuntime) -> None:
        try:
            result = await runtime.engine.startup()
            if result is not None:
                self.results[runtime.config.name] = result
            elif runtime.host is not None:
                await runtime.engine.guarded_power_on()
        except FlashPowerLoss:
            raise  # fault injection: the BMC is down
        except Exception:  # the agent keeps serving (donor, Redfish, periodic checks)
            log.exception("%s: start-up check of %s failed", self.config.node_id,
                          runtime.config.name)

    async def _periodic(self, runtime: TargetRuntime) -> None:
        """Re-check the flash every ``check_interval_s``; recover only if it still fails
        under the engine's lock (a check racing an update never undoes it)."""
        while True:
            await asyncio.sleep(runtime.config.check_interval_s)
            await self._recover_if_needed(runtime, "periodic integrity check")

    async def _recover_if_needed(self, runtime: TargetRuntime, why: str) -> None:
        try:
            result = await runtime.engine.recover_if_needed(why)
        except FlashPowerLoss:
            raise
        except Exception:
            log.exception("%s: %s of %s failed", self.config.node_id, why, runtime.config.name)
            return
        if result is not None:
            self.results[runtime.config.name] = result

    async def _watch_media(self, runtime: TargetRuntime, path: Path) -> None:
        """Removable media: when a package appears (a stick is inserted, a file is copied)
        and this target's flash does not verify, recover at once instead of waiting for the
        next trigger. The package still goes through the ladder's trust checks."""
        watcher = WatchedDirectory(path, interval=MEDIA_POLL_S)
        async for package in watcher.changes():
            await self._recover_if_needed(
                runtime, f"package appeared on removable media ({package.name})")

    # --- queries used by the CLI, the demo and Redfish ------------------------------------

    @property
    def booted(self) -> dict[str, bool]:
        """Per target with a host: did the last boot check see the host come up?"""
        return {name: bool(rt.engine.last_boot and rt.engine.last_boot.booted)
                for name, rt in self.targets.items() if rt.host is not None}

    @property
    def boot_logs(self) -> dict[str, Path]:
        return {name: rt.engine.last_boot.log_path for name, rt in self.targets.items()
                if rt.engine.last_boot and rt.engine.last_boot.log_path}

    @property
    def transfer_url(self) -> str | None:
        return self.donor.transfer_url

    def engine(self, target: str = "bios") -> RecoveryEngine:
        return self.targets[target].engine

    async def recover(self, target: str, reason: str) -> OperationResult:
        result = await self.engine(target).recover(reason)
        self.results[target] = result
        return result

    async def install(self, target: str, package: Path) -> OperationResult:
        from fwrescue.image.package import stage_package

        result = await self.engine(target).install_package(package, stage=stage_package)
        self.results[target] = result
        return result
