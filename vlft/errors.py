"""Errors a user can hit: each carries one line that names the file, sample or key, and the fix."""


class VlftError(Exception):
    """Base of every user-facing error; the CLI prints its message alone and exits non-zero."""


class ConfigError(VlftError):
    """A config key, value or combination that cannot work."""


class CheckpointError(VlftError):
    """A directory that is not the model or checkpoint it was said to be."""


class DataError(VlftError):
    """A dataset that cannot be read or used."""
