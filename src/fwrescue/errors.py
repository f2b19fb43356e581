"""One exception root for fwrescue, with subtrees by fault and by what the caller does next.

Every error carries structured fields instead of text to parse:

* ``http_status`` — the status an HTTP/Redfish layer should answer with;
* ``message_id`` — a Redfish registry MessageId (``Base.1.22.…``, ``Update.1.3.…``)
  for ``@Message.ExtendedInfo``;
* ``retryable`` — whether trying again (another donor, another source) may help.

Subtrees:

``LocalError``
    The caller or this machine is at fault (bad configuration, misuse of an API).
``RemoteError``
    A peer sent something wrong: a malformed datagram, a donor that lies.
``TrustError``
    A package or chunk failed a trust check; never written to flash.
``FlashError``
    The flash device failed to read, erase, program or verify.
``HostError``
    The host did not power, reset or boot as asked.
``SourceError`` / ``TransferError``
    An image could not be fetched from a location or a donor.

Seams translate foreign exceptions with ``raise XError(...) from e``.
"""

from __future__ import annotations

__all__ = [
    "BootTimeout",
    "ChunkMismatch",
    "CompatibilityError",
    "ConfigError",
    "DonorUnavailable",
    "FlashCancelled",
    "FlashError",
    "FlashPowerLoss",
    "FlashVerifyError",
    "FlashromError",
    "FwRescueError",
    "HostError",
    "JournalError",
    "LocalError",
    "LocalProtocolError",
    "ManifestError",
    "OperationCancelled",
    "PackageError",
    "RecoveryFailed",
    "RemoteError",
    "RemoteProtocolError",
    "RollbackError",
    "SignatureError",
    "SizeLimitExceeded",
    "SourceError",
    "TransferError",
    "TrustError",
]


class FwRescueError(Exception):
    """Root of every error fwrescue raises on purpose."""

    http_status: int = 500
    message_id: str = "Base.1.22.InternalError"
    retryable: bool = False

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, object] = dict(fields)

    def __str__(self) -> str:
        if not self.fields:
            return self.message
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.fields.items()))
        return f"{self.message} ({extra})"


# --- local faults: the caller or this machine ------------------------------------------


class LocalError(FwRescueError):
    """The caller or the local machine is at fault."""


class ConfigError(LocalError):
    """A configuration file or value is invalid; nothing was started."""

    http_status = 400
    message_id = "Base.1.22.PropertyValueError"


class LocalProtocolError(LocalError):
    """This side tried an illegal protocol transition; the session is poisoned."""


class JournalError(LocalError):
    """The recovery journal could not be read or written."""


# --- remote faults: a peer sent something wrong ------------------------------------------


class RemoteError(FwRescueError):
    """A peer is at fault; try another."""

    http_status = 502
    retryable = True


class RemoteProtocolError(RemoteError):
    """A datagram was malformed, oversize, unauthenticated, replayed or out of state."""


# --- trust ---------------------------------------------------------------------------------


class TrustError(FwRescueError):
    """A package, manifest or chunk failed a trust check. Nothing was written to flash."""

    http_status = 400
    message_id = "Update.1.3.VerificationFailed"
    retryable = True  # another donor or source may hold a good copy


class PackageError(TrustError):
    """A package file is malformed (bad archive, missing member, oversize)."""


class ManifestError(TrustError):
    """A manifest is malformed or violates a field constraint."""


class SignatureError(TrustError):
    """The manifest signature is missing, malformed, or not from a trusted key."""


class CompatibilityError(TrustError):
    """The package targets another component or another machine."""

    message_id = "Update.1.3.UpdateNotApplicable"


class RollbackError(TrustError):
    """The package's security version is below the anti-rollback floor."""

    message_id = "Update.1.3.UpdateSkippedVersionTooLow"


class ChunkMismatch(TrustError):
    """A received chunk (or the whole image) does not match the signed digest."""


class SizeLimitExceeded(TrustError):
    """An untrusted length exceeded its configured limit."""

    http_status = 413
    message_id = "Base.1.22.PayloadTooLarge"


# --- flash ---------------------------------------------------------------------------------


class FlashError(FwRescueError):
    """The flash device failed. The host stays off or in reset."""

    message_id = "Update.1.3.ApplyFailed"
    retryable = True


class FlashVerifyError(FlashError):
    """Read-back after writing does not match the staged image."""


class FlashPowerLoss(FlashError):
    """Power was lost mid-operation (fault injection); the chip may hold a torn block."""


class FlashromError(FlashError):
    """The flashrom tool failed; ``fields['exit_code']`` and ``fields['stderr']`` say how."""


# --- host ----------------------------------------------------------------------------------


class HostError(FwRescueError):
    """The host did not power, reset or answer as asked."""

    retryable = True


class BootTimeout(HostError):
    """The host did not report boot success within the watchdog time."""


# --- fetching ------------------------------------------------------------------------------


class SourceError(FwRescueError):
    """A predetermined location had no usable package."""

    http_status = 502
    message_id = "Update.1.3.TransferFailed"
    retryable = True


class TransferError(RemoteError):
    """A donor transfer failed (connection lost, bad status, stall)."""

    message_id = "Update.1.3.TransferFailed"


class DonorUnavailable(TransferError):
    """The donor refused or is gone; resume elsewhere."""


class RecoveryFailed(FwRescueError):
    """Recovery gave up after every source and donor; the host stays held."""

    message_id = "Update.1.3.ApplyFailed"


# --- cancellation --------------------------------------------------------------------------


class OperationCancelled(FwRescueError):
    """An operator cancelled the operation at a safe point; the host stays held."""

    http_status = 409
    message_id = "TaskEvent.1.0.TaskCancelled"


class FlashCancelled(OperationCancelled):
    """A flash write stopped at an erase-block boundary because it was cancelled.

    ``fields['written']`` is how many image bytes were complete, ``fields['offset']`` the
    region offset where the next block would have started. The region is incomplete."""
