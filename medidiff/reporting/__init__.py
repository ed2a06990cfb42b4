"""Reporting: pictures and report files written next to a task's outputs (matplotlib lives here only)."""
