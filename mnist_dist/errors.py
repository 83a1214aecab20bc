"""Errors a user can fix. Entry points print them as one line (no traceback) and exit with 2."""


class UserError(Exception):
    """Bad input: a flag, a config file, a dataset file, a checkpoint. The message names the fix."""


class ConfigError(UserError):
    """An invalid option value, an unknown key, or an unreadable config file."""


class DatasetError(UserError):
    """Dataset files that are missing, corrupt, or cannot be downloaded."""


def report_error(error: UserError) -> None:
    """Print the one-line message once per job: every rank hits the same error, rank 0 says it."""
    import os
    import sys

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {error}", file=sys.stderr)
