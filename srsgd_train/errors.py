"""Errors a user can cause. The CLI prints their message as one paragraph and exits 2."""


class UserError(Exception):
    """Bad recipe, missing data, wrong path, corrupt checkpoint: not a bug."""

    exit_code = 2
