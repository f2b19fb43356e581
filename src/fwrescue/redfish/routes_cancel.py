"""``DELETE`` on a Task: cancel its operation at the next safe point.

Contract: needs ``ConfigureComponents``. A running Task whose backend accepts the
cancellation answers 202 with the Task monitor in ``Location``; the Task ends
``Cancelled`` when the operation reached a safe point (before the host is held, or
between two erase blocks of the flash write — never inside an erase). A finished Task,
or one past its last safe point (its flash already verified), or a backend that is
no :class:`~fwrescue.redfish.backend.CancellableBackend`, answers 409
``Base.1.22.ResourceInUse`` and nothing changes. An unknown Task is 404.
"""

from __future__ import annotations

from aiohttp import web

from fwrescue.redfish.backend import CancellableBackend
from fwrescue.redfish.http import SERVICE, found, json_response, require
from fwrescue.redfish.messages import RequestError
from fwrescue.redfish.tasks import TASKS_URI, task_json

__all__ = ["add_cancel_routes"]


def add_cancel_routes(app: web.Application) -> None:
    svc = app[SERVICE]

    async def cancel_task(request: web.Request) -> web.Response:
        require(request, "ConfigureComponents")
        task = found(svc.tasks.get(request.match_info["id"]), request)
        backend = svc.backend
        if task.finished or not (isinstance(backend, CancellableBackend)
                                 and backend.cancel_operation(task.id)):
            raise RequestError(409, "Base.1.22.ResourceInUse")
        return json_response(task_json(task), 202, {
            "Location": task.monitor_uri, "Retry-After": str(svc.settings.retry_after_s)})

    app.router.add_delete(f"{TASKS_URI}/{{id}}", cancel_task)
