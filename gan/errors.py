"""Errors that name what the user got wrong; the command line prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a command-line value."""


class ConfigError(UserError):
    """An invalid config value; the message starts with the dotted key."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")


class DataError(UserError):
    """A dataset that is missing, malformed or does not fit the config."""


class CheckpointMismatchError(UserError):
    """A checkpoint written for another model config than the one requested."""


class TrainingError(RuntimeError):
    """A training run that cannot go on, such as too many non-finite updates; names the kimg."""
