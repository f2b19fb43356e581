"""Donor selection policies: pure functions of the offers and the recipient's context.

A policy ranks the offers that passed the recipient's filter and explains itself:
``select(offers, ctx) -> Selection(ranked, reason)``. The recipient ACCEPTs ``ranked[0]``
and falls back along ``ranked`` on NAK, timeout or failure. A policy may drop offers
(``pinned`` keeps only one version); an empty ranking means "nothing acceptable".

Built-ins (ties always keep arrival order, so every ranking is deterministic):

``first``          arrival order (ISC dhclient with ``select-timeout 0``)
``newest``         highest ``security_version``, then highest ``version``
``pinned``         only offers whose ``version`` equals the pinned version, then ``newest``
``least-loaded``   lowest ``load / capacity``
``prefer-console`` consoles first, then least loaded
``prefer-peer``    peers first, then least loaded
``same-rack``      offers with the recipient's topology label first, then least loaded
``weighted``       highest score (see :class:`WeightedPolicy`)

More policies come from the ``fwrescue.policies`` entry-point group: each entry point
names a factory (a class or function) called with the policy's options and returning a
:class:`Policy`.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fwrescue.errors import ConfigError

from .messages import DonorKind, Offer

__all__ = [
    "ENTRY_POINT_GROUP",
    "FirstPolicy",
    "KindPolicy",
    "LeastLoadedPolicy",
    "NewestPolicy",
    "PinnedPolicy",
    "Policy",
    "PolicyFactory",
    "PolicyRegistry",
    "SameRackPolicy",
    "Selection",
    "SelectionContext",
    "WeightedPolicy",
    "default_registry",
    "get_policy",
    "version_key",
]

ENTRY_POINT_GROUP = "fwrescue.policies"


@dataclass(frozen=True, kw_only=True)
class SelectionContext:
    """What a policy may know about the recipient."""

    recipient_id: str
    target: str
    machine_name: str
    installed_version: str | None
    security_version: int
    topology: str | None = None
    pinned_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Offers in preference order, and why."""

    ranked: tuple[Offer, ...]
    reason: str


class Policy(Protocol):
    name: str

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection: ...


PolicyFactory = Callable[..., Policy]

_VERSION_PART = re.compile(r"[0-9]+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for versions: dotted numeric parts compare numerically ("1.10" > "1.9").

    Alphabetic parts compare as text and sort below numbers at the same position.
    """
    return tuple((1, int(p), "") if p.isdigit() else (0, 0, p.lower())
                 for p in _VERSION_PART.findall(version))


def _freshness(offer: Offer) -> tuple[int, tuple[tuple[int, int, str], ...]]:
    return offer.security_version, version_key(offer.version)


def _describe(offer: Offer) -> str:
    return (f"donor {offer.donor_id} ({offer.donor_kind.value}, version {offer.version}, "
            f"security_version {offer.security_version}, load {offer.load}/{offer.capacity})")


def _explain(name: str, ranked: Sequence[Offer], why: str) -> Selection:
    if not ranked:
        return Selection(ranked=(), reason=f"{name}: no acceptable offer ({why})")
    others = len(ranked) - 1
    return Selection(ranked=tuple(ranked),
                     reason=f"{name}: chose {_describe(ranked[0])} — {why}; {others} fallback(s)")


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"policy {name!r} takes no options", options=sorted(options))


class FirstPolicy:
    """The first acceptable offer, in arrival order."""

    name = "first"

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        return _explain(self.name, offers, "first acceptable offer to arrive")


class NewestPolicy:
    """Highest security_version, then highest version."""

    name = "newest"

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        ranked = sorted(offers, key=_freshness, reverse=True)
        return _explain(self.name, ranked, "highest security_version, then version")


class PinnedPolicy:
    """Only offers of exactly ``version`` (or the context's ``pinned_version``), newest first."""

    name = "pinned"

    def __init__(self, version: str | None = None) -> None:
        if version is not None and (not isinstance(version, str) or not version):
            raise ConfigError("pinned policy needs a non-empty version string")
        self.version = version

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        pin = self.version if self.version is not None else ctx.pinned_version
        if pin is None:
            return _explain(self.name, (), "no pinned version configured")
        ranked = sorted((o for o in offers if o.version == pin), key=_freshness, reverse=True)
        return _explain(self.name, ranked, f"version pinned to {pin}")


class LeastLoadedPolicy:
    """Lowest load/capacity first."""

    name = "least-loaded"

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        ranked = sorted(offers, key=lambda o: o.load_ratio)
        return _explain(self.name, ranked, "lowest load/capacity")


class KindPolicy:
    """One donor kind first (``prefer-console`` / ``prefer-peer``), then least loaded."""

    def __init__(self, kind: DonorKind) -> None:
        self.kind = kind
        self.name = f"prefer-{kind.value}"

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        ranked = sorted(offers, key=lambda o: (o.donor_kind != self.kind, o.load_ratio))
        return _explain(self.name, ranked, f"{self.kind.value} donors first, then least loaded")


class SameRackPolicy:
    """Offers sharing the recipient's topology label first, then least loaded."""

    name = "same-rack"

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        def key(o: Offer) -> tuple[bool, float]:
            return (ctx.topology is None or o.topology != ctx.topology, o.load_ratio)

        ranked = sorted(offers, key=key)
        return _explain(self.name, ranked, f"topology {ctx.topology!r} first, then least loaded")


class WeightedPolicy:
    """Highest weighted score in [0, 1]; weights are options and must be non-negative.

    score = load·(1 − load/capacity) + topology·[same label] + kind·[kind == preferred]
            + freshness·[newest (security_version, version) among the offers]

    The default weights follow Dragonfly's scheduler, which scores parents by load 0.6,
    data-centre affinity 0.2, location 0.1 and host type 0.1 (REFERENCES.md, "Peer
    distribution"); we map affinity to the topology label, host type to the donor kind
    (peers preferred, to keep the console's egress low) and location to version freshness.
    """

    name = "weighted"

    def __init__(self, *, load: float = 0.6, topology: float = 0.2, kind: float = 0.1,
                 freshness: float = 0.1, prefer_kind: str = "peer") -> None:
        weights = {"load": load, "topology": topology, "kind": kind, "freshness": freshness}
        for key, value in weights.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not (
                0.0 <= float(value) <= 100.0
            ):
                raise ConfigError("weighted policy weight must be a number in [0, 100]",
                                  weight=key, value=repr(value))
        try:
            self.prefer_kind = DonorKind(prefer_kind)
        except ValueError as e:
            raise ConfigError("prefer_kind must be 'peer' or 'console'",
                              value=repr(prefer_kind)) from e
        self.weights = {k: float(v) for k, v in weights.items()}

    def score(self, offer: Offer, ctx: SelectionContext, newest: object) -> float:
        w = self.weights
        return (w["load"] * max(0.0, 1.0 - offer.load_ratio)
                + w["topology"] * (ctx.topology is not None and offer.topology == ctx.topology)
                + w["kind"] * (offer.donor_kind == self.prefer_kind)
                + w["freshness"] * (_freshness(offer) == newest))

    def select(self, offers: Sequence[Offer], ctx: SelectionContext) -> Selection:
        if not offers:
            return _explain(self.name, (), "no offers")
        newest = max(_freshness(o) for o in offers)
        scored = sorted(((self.score(o, ctx, newest), i, o) for i, o in enumerate(offers)),
                        key=lambda t: (-t[0], t[1]))
        ranked = [o for _, _, o in scored]
        return _explain(self.name, ranked, f"highest weighted score {scored[0][0]:.3f}")


def _builtin_factories() -> dict[str, PolicyFactory]:
    def simple(cls: Callable[[], Policy], name: str) -> PolicyFactory:
        def make(**options: Any) -> Policy:
            _no_options(name, options)
            return cls()

        return make

    def kind(k: DonorKind) -> PolicyFactory:
        def make(**options: Any) -> Policy:
            _no_options(f"prefer-{k.value}", options)
            return KindPolicy(k)

        return make

    return {
        "first": simple(FirstPolicy, "first"),
        "newest": simple(NewestPolicy, "newest"),
        "pinned": PinnedPolicy,
        "least-loaded": simple(LeastLoadedPolicy, "least-loaded"),
        "prefer-console": kind(DonorKind.CONSOLE),
        "prefer-peer": kind(DonorKind.PEER),
        "same-rack": simple(SameRackPolicy, "same-rack"),
        "weighted": WeightedPolicy,
    }


class PolicyRegistry:
    """Policies by name. Built-ins first; entry points cannot replace a built-in name."""

    def __init__(self) -> None:
        self._factories: dict[str, PolicyFactory] = dict(_builtin_factories())
        self._builtins = frozenset(self._factories)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def register(self, name: str, factory: PolicyFactory) -> None:
        """Add a policy; raise ConfigError for a bad or already-taken name."""
        if not isinstance(name, str) or re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name) is None:
            raise ConfigError("bad policy name", name=repr(name))
        if name in self._factories:
            raise ConfigError("policy name already registered", name=name)
        if not callable(factory):
            raise ConfigError("policy factory is not callable", name=name)
        self._factories[name] = factory

    def load_entry_points(
        self,
        entry_points: Callable[..., Iterable[importlib.metadata.EntryPoint]] = (
            importlib.metadata.entry_points
        ),
    ) -> None:
        """Register every policy in the ``fwrescue.policies`` group.

        Raises ConfigError if one fails to import or collides with a registered name.
        """
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                factory = ep.load()
            except Exception as e:  # any import-time failure of a plug-in is a config error
                raise ConfigError("policy entry point failed to load", name=ep.name,
                                  value=ep.value) from e
            self.register(ep.name, factory)

    def get(self, name: str, **options: Any) -> Policy:
        """Build the named policy; raise ConfigError for an unknown name or bad options."""
        factory = self._factories.get(name)
        if factory is None:
            raise ConfigError("unknown selection policy", name=repr(name)[:80],
                              known=", ".join(self.names()))
        try:
            policy = factory(**options)
        except ConfigError:
            raise
        except TypeError as e:
            raise ConfigError("bad options for policy", name=name, detail=str(e)) from e
        if not callable(getattr(policy, "select", None)):
            raise ConfigError("policy factory did not return a policy", name=name)
        return policy


def default_registry() -> PolicyRegistry:
    """Built-ins plus the installed ``fwrescue.policies`` entry points."""
    registry = PolicyRegistry()
    registry.load_entry_points()
    return registry


def get_policy(name: str, **options: Any) -> Policy:
    """Look ``name`` up in :func:`default_registry`; raise ConfigError if unknown."""
    return default_registry().get(name, **options)
