"""Partially observable tasks."""
