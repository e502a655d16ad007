"""Trackers: consumers of the training loop's hooks (the live console display)."""
