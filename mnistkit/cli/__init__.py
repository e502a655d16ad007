"""Command line. ``mnistkit --help`` imports no torch: commands import what they need when run."""

from mnistkit.cli.app import main

__all__ = ["main"]
