"""Nightly sync of the FutureLearn Partners API into the Teach Computing database."""

from .definitions import defs

__all__ = ["defs"]
