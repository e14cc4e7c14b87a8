"""The root of tunegate's named errors: expected failures the CLI reports without a traceback."""


class TunegateError(Exception):
    """A failure with a message meant for the user (bad data, a failed check, bad params)."""
