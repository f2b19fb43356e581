"""Image transfer between donors and recipients: content-addressed HTTP with Range,
bearer tokens from the ACK, chunk-verified streaming into resumable staging."""

from fwrescue.transfer.client import FetchStats, ImageFetcher, TransferLimits
from fwrescue.transfer.server import (
    ImageCatalog,
    ServerStats,
    TransferServer,
    TransferServerSettings,
    create_transfer_app,
)
from fwrescue.transfer.staging import StagedImage, StagingArea, StagingError
from fwrescue.transfer.tokens import Grant, TokenError, TokenRegistry

__all__ = [
    "FetchStats",
    "Grant",
    "ImageCatalog",
    "ImageFetcher",
    "ServerStats",
    "StagedImage",
    "StagingArea",
    "StagingError",
    "TokenError",
    "TokenRegistry",
    "TransferLimits",
    "TransferServer",
    "TransferServerSettings",
    "create_transfer_app",
]
