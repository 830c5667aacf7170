"""A container-first Globus Compute endpoint."""

__version__ = "0.1.0"
