"""VirtualHost: the model host boots only from flash that was genuine at power-on."""

from __future__ import annotations

import asyncio

import pytest

from fwrescue.errors import HostError
from fwrescue.host.base import Host, PowerState
from fwrescue.host.virtual import VirtualHost


class Flash:
    """Stands in for the agent's "flash holds a genuine image" check."""

    def __init__(self, genuine: bool) -> None:
        self.genuine = genuine
        self.checks = 0

    def ok(self) -> bool:
        self.checks += 1
        return self.genuine


def test_virtual_host_satisfies_the_host_protocol() -> None:
    assert isinstance(VirtualHost(firmware_ok=lambda: True), Host)


async def test_power_on_with_genuine_flash_boots_and_records_a_good_run() -> None:
    flash = Flash(genuine=True)
    host = VirtualHost(firmware_ok=flash.ok, boot_seconds=0.01)
    await host.power_on()
    result = await host.wait_boot(timeout=1.0)
    assert result.booted
    assert result.seconds >= 0.01
    assert host.runs == [True]
    assert await host.power_state() is PowerState.ON


async def test_corrupt_flash_at_power_on_never_boots_and_is_recorded_as_a_bad_run() -> None:
    host = VirtualHost(firmware_ok=Flash(genuine=False).ok, boot_seconds=0.0)
    await host.power_on()
    result = await host.wait_boot(timeout=0.02)
    assert not result.booted
    assert "not genuine" in result.detail
    assert host.runs == [False]


async def test_flash_fixed_after_power_on_does_not_rescue_the_running_boot() -> None:
    flash = Flash(genuine=False)
    host = VirtualHost(firmware_ok=flash.ok, boot_seconds=0.0)
    await host.power_on()
    flash.genuine = True  # too late: the firmware already started from bad flash
    assert not (await host.wait_boot(timeout=0.02)).booted
    assert host.runs == [False]


async def test_dc_off_recovery_power_off_fix_flash_power_on_boots() -> None:
    flash = Flash(genuine=False)
    host = VirtualHost(firmware_ok=flash.ok, boot_seconds=0.0)
    await host.power_on()
    await host.power_off()
    assert await host.power_state() is PowerState.OFF
    flash.genuine = True
    await host.power_on()
    assert (await host.wait_boot(timeout=0.5)).booted
    assert host.runs == [False, True]


async def test_dc_on_recovery_hold_from_off_runs_nothing_until_release() -> None:
    flash = Flash(genuine=False)
    host = VirtualHost(firmware_ok=flash.ok, boot_seconds=0.0)
    await host.hold_reset()
    assert await host.power_state() is PowerState.RESET_HELD
    assert host.runs == [] and flash.checks == 0
    held = await host.wait_boot(timeout=0.01)
    assert not held.booted and "reset" in held.detail
    flash.genuine = True
    await host.release_reset()
    assert await host.power_state() is PowerState.ON
    assert (await host.wait_boot(timeout=0.5)).booted
    assert host.runs == [True]


async def test_hold_reset_from_on_stops_the_run_and_release_runs_firmware_again() -> None:
    host = VirtualHost(firmware_ok=lambda: True, boot_seconds=0.0)
    await host.power_on()
    await host.hold_reset()
    assert await host.power_state() is PowerState.RESET_HELD
    await host.release_reset()
    assert host.runs == [True, True]


async def test_repeated_and_out_of_order_calls_are_idempotent() -> None:
    host = VirtualHost(firmware_ok=lambda: True, boot_seconds=0.0)
    await host.power_off()
    await host.release_reset()  # from OFF: nothing happens
    assert await host.power_state() is PowerState.OFF
    await host.power_on()
    await host.power_on()
    await host.release_reset()  # from ON: nothing happens
    assert host.runs == [True]
    await host.hold_reset()
    await host.hold_reset()
    assert host.runs == [True]
    await host.power_on()  # from RESET_HELD acts as a release
    assert host.runs == [True, True]
    assert await host.power_state() is PowerState.ON


async def test_wait_boot_on_an_off_host_returns_not_booted_without_waiting() -> None:
    host = VirtualHost(firmware_ok=lambda: True)
    result = await host.wait_boot(timeout=60.0)
    assert not result.booted
    assert result.detail == "host is off"


async def test_boot_slower_than_the_watchdog_is_reported_as_not_booted() -> None:
    host = VirtualHost(firmware_ok=lambda: True, boot_seconds=10.0)
    await host.power_on()
    assert not (await host.wait_boot(timeout=0.01)).booted


async def test_power_off_during_wait_boot_ends_the_wait_as_not_booted() -> None:
    host = VirtualHost(firmware_ok=lambda: True, boot_seconds=10.0)
    await host.power_on()
    waiter = asyncio.create_task(host.wait_boot(timeout=10.0))
    await asyncio.sleep(0)
    await host.power_off()
    result = await asyncio.wait_for(waiter, 1.0)
    assert not result.booted
    assert "power changed" in result.detail


async def test_on_run_is_called_once_per_firmware_run() -> None:
    calls: list[str] = []
    host = VirtualHost(firmware_ok=lambda: True, on_run=lambda: calls.append("run"))
    await host.power_on()
    await host.power_off()
    await host.hold_reset()
    await host.release_reset()
    assert calls == ["run", "run"]


async def test_failing_firmware_check_propagates_and_leaves_the_host_off() -> None:
    def broken() -> bool:
        raise HostError("flash unreadable")

    host = VirtualHost(firmware_ok=broken)
    with pytest.raises(HostError, match="flash unreadable"):
        await host.power_on()
    assert await host.power_state() is PowerState.OFF
    assert host.runs == []


async def test_close_powers_off() -> None:
    host = VirtualHost(firmware_ok=lambda: True)
    await host.power_on()
    await host.close()
    await host.close()
    assert host.closed and await host.power_state() is PowerState.OFF


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_negative_or_nan_boot_seconds_is_rejected(bad: float) -> None:
    with pytest.raises(HostError):
        VirtualHost(firmware_ok=lambda: True, boot_seconds=bad)
