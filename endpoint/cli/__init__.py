"""The command line (`compute-endpoint`): parses arguments, calls `endpoint.admin`, and is the
only part of the package that prints to the terminal."""

from endpoint.cli.app import main

__all__ = ["main"]
