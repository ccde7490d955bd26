"""Operator tools for the `dead-letter` stream: list what is there, replay an entry after a fix."""
