"""Nightly sync of the FutureLearn Partners API into the Teach Computing database.

Importing this package does no work: the Dagster definitions are built by
``partners_dagster.definitions.defs`` when Dagster loads them.
"""
