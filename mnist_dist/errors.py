"""Errors a user can fix. Entry points print them as one line (no traceback) and exit with 2."""


class UserError(Exception):
    """Bad input: a flag, a config file, a dataset file, a checkpoint. The message names the fix."""


class ConfigError(UserError):
    """An invalid option value, an unknown key, or an unreadable config file."""


class DatasetError(UserError):
    """Dataset files that are missing, corrupt, or cannot be downloaded."""
