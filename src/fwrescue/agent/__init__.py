"""The agent: the composition root that builds one BMC's fwrescue from its configuration.

``core`` (:class:`Agent`: the targets' engines, the recipient, the donor service, the
sources, the fleet policy), ``hardware`` (the flash and host a target's settings name),
``redfish_backend`` (the Redfish service over a running agent), ``progress`` (the engine's
phases as Redfish messages and percentages), ``fleet_policy`` (the signed fleet policy in
force), ``lifecycle`` (signal handling of long-running commands) and ``cli``
(``fwrescue agent``).
"""

from fwrescue.agent.core import Agent, TargetRuntime

__all__ = ["Agent", "TargetRuntime"]
