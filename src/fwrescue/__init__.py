"""fwrescue: self-healing server firmware across a fleet."""

__version__ = "0.1.0"
