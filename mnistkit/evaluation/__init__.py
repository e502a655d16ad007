"""Trained runs: ``eval``, ``predict``, classification metrics and plots."""
