"""The `wit` command line: the top floor, importing beam_jobs, pipeline and clipmodel; nothing imports it."""


class CommandError(Exception):
    """Bad input a user can fix: printed by `wit` as one line, exit status 2."""
