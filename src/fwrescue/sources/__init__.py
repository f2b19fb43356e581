"""Predetermined locations: the ladder of places tried, in configured order, before (or
instead of) asking the network — golden flash region, BMC storage, removable media,
network shares, HTTP(S) URLs. Every candidate goes through the same trust checks."""

from fwrescue.sources.base import Candidate, ImageSource, LogFn, discard_log
from fwrescue.sources.directory import DirectorySource, WatchedDirectory
from fwrescue.sources.golden import GoldenRegionSource
from fwrescue.sources.http import HttpSource
from fwrescue.sources.ladder import SourceLadder, build_sources, locate

__all__ = [
    "Candidate",
    "DirectorySource",
    "GoldenRegionSource",
    "HttpSource",
    "ImageSource",
    "LogFn",
    "SourceLadder",
    "WatchedDirectory",
    "build_sources",
    "discard_log",
    "locate",
]
