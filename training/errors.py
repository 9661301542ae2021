"""The error of a config value that cannot work (raised before any training, so nothing is lost)."""


class ConfigError(ValueError):
    """A config value that cannot work; the message is one sentence naming the key."""
