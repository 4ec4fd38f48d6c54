"""A local FutureLearn Partners API sandbox with deterministic generated data."""

from .dataset import SCALES, SandboxDataset, generate
from .server import (
    CONTROL_TOKEN_HEADER,
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Faults,
    SandboxApi,
    SandboxControl,
    SandboxControlError,
    SandboxServer,
)

__all__ = [
    "CONTROL_TOKEN_HEADER",
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "SCALES",
    "Faults",
    "SandboxApi",
    "SandboxControl",
    "SandboxControlError",
    "SandboxDataset",
    "SandboxServer",
    "generate",
]
