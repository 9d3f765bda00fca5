"""Errors a user can act on: one sentence that names the problem and the fix."""


class ConfigError(ValueError):
    """A config or override that cannot work; raised before any model loads."""
