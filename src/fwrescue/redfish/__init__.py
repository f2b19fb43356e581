"""The agent's Redfish service (DMTF DSP0266) and a Redfish client.

Plug an agent in through :class:`~fwrescue.redfish.backend.RedfishBackend`, build the app
with :func:`create_redfish_app` and serve it with :func:`start_redfish_server`.
"""

from fwrescue.redfish.app import create_redfish_app, start_redfish_server
from fwrescue.redfish.backend import (
    ImageInfo,
    OperationEvent,
    RedfishBackend,
    SystemIdentity,
    TargetInfo,
)
from fwrescue.redfish.settings import AccountSpec, RedfishServiceSettings

__all__ = [
    "AccountSpec",
    "ImageInfo",
    "OperationEvent",
    "RedfishBackend",
    "RedfishServiceSettings",
    "SystemIdentity",
    "TargetInfo",
    "create_redfish_app",
    "start_redfish_server",
]
