"""The ladder: try predetermined sources in configured order; config specs to sources.

:func:`locate` walks the sources, stages every candidate with
:func:`fwrescue.image.package.stage_package` (the same trust checks a donor's package
gets) and returns the first verified, staged image. A candidate that fails a trust
check is logged with its reason and the next one is tried; a source that fails as a
whole (SourceError) is logged and the next source is tried. Any other error (the
staging directory is unwritable, a bug) propagates: it is not the candidate's fault,
and silently moving on would hide it.

Events passed to ``log``: ``source_start``, ``source_failed``, ``source_exhausted``,
``candidate_rejected``, ``candidate_accepted`` (plus ``candidate_skipped`` from
directory sources), each with ``source`` and, for candidates, ``candidate``,
``origin`` and ``reason``/``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from fwrescue.errors import ConfigError, SourceError, TrustError
from fwrescue.flash.device import Flash
from fwrescue.image.package import stage_package
from fwrescue.recovery.ports import Located
from fwrescue.sources.base import Candidate, ImageSource, LogFn, discard_log
from fwrescue.sources.directory import DEFAULT_MAX_FILES, DEFAULT_MAX_PACKAGE_BYTES, DirectorySource
from fwrescue.sources.golden import GoldenRegionSource
from fwrescue.sources.http import DEFAULT_HTTP_TIMEOUT, DEFAULT_STALL_TIMEOUT, HttpSource
from fwrescue.trust.verifier import VerifiedManifest, Verifier

__all__ = ["MAX_SOURCES", "SourceLadder", "build_sources", "locate"]

# Enough for every kind of location twice over; a longer ladder is a config mistake.
MAX_SOURCES = 32


async def _close(iterator: object) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _discard(candidate: Candidate) -> None:
    if candidate.cleanup:
        with contextlib.suppress(FileNotFoundError):
            candidate.path.unlink()


async def locate(
    sources: Sequence[ImageSource],
    verifier: Verifier,
    target: str,
    machine_name: str,
    workdir: Path,
    staging_dir: Path,
    log: LogFn = discard_log,
) -> tuple[VerifiedManifest, Path, str] | None:
    """Return (verified manifest, staged image path, origin) from the first source that
    yields a package passing every trust check, or None when no source has one.

    Temporary candidates (``cleanup=True``) are deleted whether accepted or not.
    Raises only what is not a source's or a candidate's fault (e.g. OSError on the
    staging directory) — never a TrustError or SourceError.
    """
    for source in sources:
        log("source_start", source=source.name)
        iterator = source.candidates(target, machine_name, workdir)
        try:
            async for candidate in iterator:
                try:
                    verified, staged = await asyncio.to_thread(
                        stage_package, verifier, candidate.path, target=target,
                        machine_name=machine_name, staging_dir=staging_dir)
                except TrustError as e:
                    log("candidate_rejected", source=source.name,
                        candidate=str(candidate.path), origin=candidate.origin,
                        reason=str(e), error=type(e).__name__)
                    continue
                finally:
                    _discard(candidate)
                log("candidate_accepted", source=source.name, candidate=str(candidate.path),
                    origin=candidate.origin, digest=verified.digest,
                    version=verified.manifest.version)
                return verified, staged, candidate.origin
        except SourceError as e:
            log("source_failed", source=source.name, reason=str(e), error=type(e).__name__)
            continue
        finally:
            await _close(iterator)
        log("source_exhausted", source=source.name)
    return None


# --- configuration -------------------------------------------------------------------------

_DIRECTORY_KINDS = ("bmc-storage", "usb", "share")
_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # kind: (required keys, optional keys)
    "bmc-storage": ({"path"}, {"max_files", "max_package_bytes"}),
    "usb": ({"path"}, {"max_files", "max_package_bytes"}),
    "share": ({"path"}, {"max_files", "max_package_bytes"}),
    "http": ({"url"}, {"max_bytes", "timeout", "stall_timeout", "ca_file"}),
    "golden": ({"offset", "size", "manifest_path"}, set()),
}


def _int(spec: Mapping[str, object], key: str, default: int, index: int) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError("source field must be a non-negative integer", source=index, key=key)
    return value


def _float(spec: Mapping[str, object], key: str, default: float, index: int) -> float:
    value = spec.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError("source field must be a positive number", source=index, key=key)
    return float(value)


def _str(spec: Mapping[str, object], key: str, index: int) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ConfigError("source field must be a non-empty string", source=index, key=key)
    return value


def build_sources(
    specs: Sequence[Mapping[str, object]],
    *,
    flash: Flash | None = None,
    log: LogFn = discard_log,
) -> list[ImageSource]:
    """Build the ladder from config specs, in order. Examples::

        {"kind": "usb", "path": "/media/usb0"}          # also "bmc-storage", "share"
        {"kind": "http", "url": "https://fw/{target}/{machine}.fwpkg", "ca_file": "..."}
        {"kind": "golden", "offset": 16777216, "size": 16777216,
         "manifest_path": "/var/lib/fwrescue/golden.json"}

    Raises ConfigError for an unknown kind, missing or unknown keys, wrong types, or a
    ``golden`` spec without a ``flash``.
    """
    if len(specs) > MAX_SOURCES:
        raise ConfigError("too many sources", count=len(specs), limit=MAX_SOURCES)
    sources: list[ImageSource] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ConfigError("source spec must be a table", source=index)
        kind = spec.get("kind")
        if not isinstance(kind, str) or kind not in _KEYS:
            raise ConfigError("unknown source kind", source=index, kind=str(kind)[:64],
                              known=sorted(_KEYS))
        required, optional = _KEYS[kind]
        keys = set(spec) - {"kind"}
        if missing := required - keys:
            raise ConfigError("source spec lacks keys", source=index, keys=sorted(missing))
        if unknown := keys - required - optional:
            raise ConfigError("unknown keys in source spec", source=index,
                              keys=sorted(map(str, unknown)))
        if kind in _DIRECTORY_KINDS:
            sources.append(DirectorySource(
                Path(_str(spec, "path", index)), kind,  # type: ignore[arg-type]
                max_files=_int(spec, "max_files", DEFAULT_MAX_FILES, index),
                max_package_bytes=_int(spec, "max_package_bytes", DEFAULT_MAX_PACKAGE_BYTES,
                                       index),
                log=log))
        elif kind == "http":
            ca = Path(_str(spec, "ca_file", index)) if "ca_file" in spec else None
            sources.append(HttpSource(
                _str(spec, "url", index),
                max_bytes=_int(spec, "max_bytes", DEFAULT_MAX_PACKAGE_BYTES, index),
                timeout=_float(spec, "timeout", DEFAULT_HTTP_TIMEOUT, index),
                stall_timeout=_float(spec, "stall_timeout", DEFAULT_STALL_TIMEOUT, index),
                ca_file=ca))
        else:
            if flash is None:
                raise ConfigError("a golden source needs the host flash", source=index)
            sources.append(GoldenRegionSource(
                flash, _int(spec, "offset", 0, index), _int(spec, "size", 0, index),
                Path(_str(spec, "manifest_path", index))))
    return sources


# --- the recovery engine's Locator ----------------------------------------------------------


class _Forward:
    """A LogFn whose destination is chosen per ``SourceLadder.locate`` call, so events a
    source logs on its own (``candidate_skipped``) reach the current transcript."""

    def __init__(self) -> None:
        self.target: LogFn = discard_log

    def __call__(self, event: str, /, **fields: object) -> None:
        self.target(event, **fields)


class SourceLadder:
    """The configured sources as the recovery engine's ``Locator``.

    ``locate(target, machine_name, workdir, log)`` stages the winning image directly in
    ``workdir`` (as an operator install does) and keeps temporary candidates in
    ``workdir/sources``; it returns a :class:`~fwrescue.recovery.ports.Located` or None.
    """

    def __init__(self, sources: Sequence[ImageSource], verifier: Verifier, *,
                 _forward: _Forward | None = None) -> None:
        self._sources = tuple(sources)
        self._verifier = verifier
        self._forward = _forward

    @classmethod
    def from_specs(cls, specs: Sequence[Mapping[str, object]], verifier: Verifier, *,
                   flash: Flash | None = None) -> SourceLadder:
        """Build from config specs (see :func:`build_sources`); ConfigError on bad specs."""
        forward = _Forward()
        return cls(build_sources(specs, flash=flash, log=forward), verifier, _forward=forward)

    @property
    def sources(self) -> tuple[ImageSource, ...]:
        return self._sources

    async def locate(self, target: str, machine_name: str, workdir: Path,
                     log: LogFn = discard_log) -> Located | None:
        """Walk the ladder (see :func:`locate`); None when no source has a verified image."""
        candidates_dir = workdir / "sources"
        candidates_dir.mkdir(parents=True, exist_ok=True)
        if self._forward is not None:
            self._forward.target = log
        try:
            found = await locate(self._sources, self._verifier, target, machine_name,
                                 candidates_dir, workdir, log)
        finally:
            if self._forward is not None:
                self._forward.target = discard_log
        if found is None:
            return None
        verified, image, origin = found
        return Located(verified=verified, image=image, origin=origin)
