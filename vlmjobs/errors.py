"""Every exception vlmjobs raises on purpose, one line each."""

from __future__ import annotations


class VlmjobsError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class ConfigError(VlmjobsError):
    """A setting (VLMJOBS_* environment variable) is invalid; the message says what to write."""


class SpecError(VlmjobsError):
    """A job spec is invalid. ``problems`` holds (field path, message) pairs, all of them."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {msg}" for path, msg in problems))


class ModelLoadError(VlmjobsError):
    """A model or adapter could not be loaded (missing directory, offline hub id, bad files)."""


class JobNotFound(VlmjobsError):
    """No job with that id in the database."""


class DataError(VlmjobsError):
    """Input data is missing or malformed as a whole (single bad items are skipped, not raised)."""


class PreflightError(VlmjobsError):
    """A train job's estimated peak GPU memory exceeds its budget; the message has the sums."""


class ScheduleNotFound(JobNotFound):
    """No schedule with that name (a JobNotFound, so the CLI exits 2 as for an unknown job)."""
