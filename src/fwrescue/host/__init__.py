"""Host backends: the server the BMC powers, resets and watches boot.

See :mod:`fwrescue.host.base` for the seam, :mod:`fwrescue.host.virtual` for the
model host and :mod:`fwrescue.host.qemu` for QEMU + OVMF (docs/host.md).
"""

from fwrescue.host.base import BootResult, FlashMode, Host, PowerState
from fwrescue.host.qemu import QemuHost, find_ovmf, prepare_firmware_hub
from fwrescue.host.virtual import VirtualHost

__all__ = [
    "BootResult",
    "FlashMode",
    "Host",
    "PowerState",
    "QemuHost",
    "VirtualHost",
    "find_ovmf",
    "prepare_firmware_hub",
]
