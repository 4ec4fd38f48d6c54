"""A local FutureLearn Partners API sandbox with deterministic generated data."""

from .dataset import SCALES, SandboxDataset, generate
from .server import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, Faults, SandboxApi, SandboxServer

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "SCALES",
    "Faults",
    "SandboxApi",
    "SandboxDataset",
    "SandboxServer",
    "generate",
]
