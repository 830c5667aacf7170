"""A local Globus Compute web service that the official SDK and endpoint accept."""

__version__ = "0.1.0"
