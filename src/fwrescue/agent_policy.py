"""The agent's fleet policy: verify, persist and enforce a signed policy from the console.

Contract of :meth:`AgentFleetPolicy.apply` (called by the Redfish Oem action):

* the document passes :func:`fwrescue.trust.policy.verify_policy` for this agent's board and
  targets and is newer than the one in force — otherwise :class:`PolicyError` with a
  specific reason, and nothing changes;
* it is persisted atomically (``state/fleet-policy.json``) *before* anything acts on it;
* each target's fleet floor raises the agent's persisted anti-rollback floor
  (:class:`RollbackStore` never lowers it, so an older or lower policy cannot undo it); from
  then on the verifier refuses any image below it, from Redfish and from donors alike;
* a target whose installed version is below the baseline updates itself in the background
  through the usual negotiation (peers first, the console as fallback), pinned to the
  baseline version; progress is an ordinary ``update`` Task (Redfish events);
* a failed baseline update (no donor has the baseline, nothing verified, the flash write
  failed; not an image flashed that then did not boot: that is a rollout failure) is
  retried after ``baseline_retry_initial_s``, doubling after each further failure up to
  ``baseline_retry_max_s`` (:class:`RetryBackoff`); the Redfish policy resource shows the
  attempts, why the last one failed and when the next is due. A success, a newly applied
  policy or a restart starts afresh.

At start, a persisted policy is re-verified (floors re-applied: a crash between the write and
the floor raise is harmless) and an outstanding baseline update is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fwrescue.atomicfile import atomic_write
from fwrescue.errors import FwRescueError
from fwrescue.protocol.policy import get_policy, version_key
from fwrescue.recovery.network import NetworkRecovery
from fwrescue.recovery.ports import FetchRequest, OperationEvent, OperationState
from fwrescue.trust.keys import TrustStore
from fwrescue.trust.policy import MAX_POLICY_BYTES, FleetPolicy, PolicyError, verify_policy
from fwrescue.trust.rollback import RollbackStore

if TYPE_CHECKING:
    from fwrescue.agent import Agent

__all__ = ["AgentFleetPolicy", "BaselineRetry", "PolicyError", "RetryBackoff"]

log = logging.getLogger(__name__)

POLICY_FILE = "fleet-policy.json"


@dataclass(frozen=True)
class RetryBackoff:
    """Bounded exponential backoff: ``initial_s`` after the first failure, doubling, never
    more than ``max_s``."""

    initial_s: float
    max_s: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` (>= 1) consecutive failures."""
        return min(self.max_s, self.initial_s * 2.0 ** min(max(failures, 1) - 1, 64))


@dataclass(frozen=True)
class BaselineRetry:
    """One target's failed baseline update and the attempt scheduled after it."""

    failures: int
    last_failure: str
    delay_s: float
    next_attempt_at: float  # wall clock (seconds since the epoch)

    @staticmethod
    def after(previous: BaselineRetry | None, failure: str, backoff: RetryBackoff,
              now: float) -> BaselineRetry:
        failures = (previous.failures if previous else 0) + 1
        delay = backoff.delay(failures)
        return BaselineRetry(failures, failure[:300], delay, now + delay)

    def describe(self) -> dict[str, Any]:
        return {"Attempts": self.failures, "LastFailure": self.last_failure,
                "RetryInterval": f"PT{self.delay_s:g}S",
                "NextAttempt": datetime.fromtimestamp(self.next_attempt_at, UTC).isoformat(
                    timespec="seconds")}


class AgentFleetPolicy:
    """The policy in force on one agent and the baseline updates it causes."""

    def __init__(self, agent: Agent, rollback: RollbackStore) -> None:
        self._agent = agent
        self._rollback = rollback
        self._path = agent.config.state_dir / POLICY_FILE
        self._trust = TrustStore.from_files(agent.config.trust)
        self.current: FleetPolicy | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: per target: the last baseline update's outcome ("updated 1.1.0", "failed: …")
        self.outcomes: dict[str, str] = {}
        config = agent.config
        self.backoff = RetryBackoff(config.baseline_retry_initial_s,
                                    config.baseline_retry_max_s)
        #: per target: the failed update awaiting its retry
        self.retries: dict[str, BaselineRetry] = {}
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def version(self) -> int:
        return self.current.version if self.current else 0

    def load(self) -> None:
        """Re-verify the persisted policy (any version) and re-apply its floors."""
        try:
            raw = self._path.read_bytes()[:MAX_POLICY_BYTES + 1]
        except FileNotFoundError:
            return
        try:
            policy = self._verify(raw, current_version=0)
        except PolicyError as e:
            log.error("persisted fleet policy refused, ignored (floors stay): %s", e)
            return
        self.current = policy
        self._raise_floors(policy)

    def _verify(self, raw: bytes, *, current_version: int) -> FleetPolicy:
        config = self._agent.config
        return verify_policy(raw, self._trust, board=config.machine_name,
                             targets=[t.name for t in config.targets],
                             current_version=current_version)

    def apply(self, raw: bytes) -> FleetPolicy:
        """Verify, persist, raise floors, start baseline updates; PolicyError changes nothing."""
        policy = self._verify(raw, current_version=self.version)
        atomic_write(self._path, policy.raw)
        self.current = policy
        self._raise_floors(policy)
        log.info("%s: fleet policy v%d in force", self._agent.config.node_id, policy.version)
        self.start_baseline_updates()
        return policy

    def _raise_floors(self, policy: FleetPolicy) -> None:
        for target, entry in policy.targets.items():
            self._rollback.raise_floor(target, entry.floor)

    def describe(self) -> dict[str, Any]:
        """What Redfish shows under ``UpdateService/Oem/Fwrescue/FleetPolicy``."""
        policy = self.current
        return {
            "Version": policy.version if policy else 0,
            "Board": self._agent.config.machine_name,
            "Targets": {t.name: {
                "Baseline": policy.targets[t.name].baseline
                if policy and t.name in policy.targets else None,
                "Floor": self._rollback.floor(t.name),
                "BaselineUpdate": self.outcomes.get(t.name),
                "BaselineRetry": self.retries[t.name].describe()
                if t.name in self.retries else None,
            } for t in self._agent.config.targets},
        }

    # --- baseline updates ---------------------------------------------------------------

    def below_baseline(self, target: str) -> str | None:
        """The baseline ``target`` must reach, if its installed version is below it."""
        policy = self.current
        entry = policy.targets.get(target) if policy else None
        runtime = self._agent.targets.get(target)
        if entry is None or entry.baseline is None or runtime is None:
            return None
        installed = runtime.engine.installed_version
        if installed is not None and version_key(installed) >= version_key(entry.baseline):
            return None
        return entry.baseline

    def start_baseline_updates(self) -> None:
        """Start every needed baseline update now (at start, and for a newly applied
        policy): pending retries are brought forward and their backoff starts afresh."""
        for timer in self._retry_timers.values():
            timer.cancel()
        self._retry_timers.clear()
        self.retries.clear()
        for target in self._agent.targets:
            self._start(target)

    def _start(self, target: str) -> None:
        self._retry_timers.pop(target, None)
        baseline = self.below_baseline(target)
        running = self._tasks.get(target)
        if baseline is None:
            self.retries.pop(target, None)
            return
        if running is not None and not running.done():
            return
        self._tasks[target] = asyncio.get_running_loop().create_task(
            self._update(target, baseline))

    def _failed(self, target: str, failure: str) -> None:
        """Record the failure and schedule the next attempt (bounded backoff)."""
        retry = BaselineRetry.after(self.retries.get(target), failure, self.backoff,
                                    time.time())
        self.retries[target] = retry
        old = self._retry_timers.pop(target, None)
        if old is not None:
            old.cancel()
        self._retry_timers[target] = asyncio.get_running_loop().call_later(
            retry.delay_s, self._start, target)
        log.warning("%s: baseline update of %s failed (%d in a row): %s; next attempt in "
                    "%g s", self._agent.config.node_id, target, retry.failures, failure,
                    retry.delay_s)

    async def stop(self) -> None:
        for timer in self._retry_timers.values():
            timer.cancel()
        self._retry_timers.clear()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _update(self, target: str, baseline: str) -> None:
        agent = self._agent
        runtime = agent.targets[target]
        engine = runtime.engine
        if not runtime.config.network:
            self.outcomes[target] = "failed: the network is disabled for this target"
            return
        op_id = engine.new_op_id("update")
        reason = f"fleet policy v{self.version}: baseline {baseline}"

        def note(event: str, **fields: Any) -> None:
            entry = {"t": round(time.time(), 3), "event": event, **fields}
            agent.events(OperationEvent(
                op_id=op_id, kind="update", target=target, state=OperationState.RUNNING,
                phase="soliciting", message=event, transcript_entry=entry))

        def progress(done: int, total: int) -> None:
            agent.events(OperationEvent(
                op_id=op_id, kind="update", target=target, state=OperationState.RUNNING,
                phase="transferring", message=f"{done}/{total} bytes", done_bytes=done,
                total_bytes=total))

        note("start", kind="update", reason=reason)
        installed = engine.installed()
        floor = agent.verifier.floor(target)
        config = agent.config
        fetcher = NetworkRecovery(
            node_id=config.node_id, topology=config.topology, network=config.network,
            timers=config.timers, policy=get_policy("pinned", version=baseline),
            verifier=agent.verifier,
            staging_dir=config.state_dir / "targets" / target / "staging-baseline",
            pinned_version=baseline)
        request = FetchRequest(
            target=target, machine_name=config.machine_name,
            installed_version=installed.manifest.version if installed else None,
            security_version=installed.manifest.security_version if installed else floor,
            min_security_version=floor)
        try:
            located = await fetcher.fetch(request, note, progress)
            result = await engine.apply(located, reason=reason, op_id=op_id)
        except FwRescueError as e:
            self.outcomes[target] = f"failed: {e}"
            self._failed(target, str(e))
            agent.events(OperationEvent(
                op_id=op_id, kind="update", target=target, state=OperationState.EXCEPTION,
                phase="failed", message=str(e)[:400], entered=True))
            return
        agent.results[target] = result
        self.outcomes[target] = (f"updated to {result.version_after}" if result.ok
                                 else f"failed: {result.reason}")
        if result.ok:
            self.retries.pop(target, None)
        elif self.below_baseline(target) is not None:  # not flashed: worth another attempt
            self._failed(target, str(result.reason))
        # else it was flashed and did not boot: the same image again would not help
        if result.ok and self.below_baseline(target) not in (None, baseline):
            # a newer policy arrived meanwhile with a higher baseline: go on to it
            loop = asyncio.get_running_loop()
            self._tasks[target] = loop.create_task(self._update(
                target, str(self.below_baseline(target))))
