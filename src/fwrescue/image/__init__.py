"""Image packages: build, strict reading, verified staging, the package store,
OpenBMC tarball import, and the ``keys``/``image`` CLI commands."""

from fwrescue.image.package import (
    PackageReader,
    build_package,
    describe,
    open_package,
    stage_package,
    write_package,
)
from fwrescue.image.store import PackageStore, StoredImage, StoreError

__all__ = [
    "PackageReader",
    "PackageStore",
    "StoreError",
    "StoredImage",
    "build_package",
    "describe",
    "open_package",
    "stage_package",
    "write_package",
]
