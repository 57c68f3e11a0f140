"""``ConfigurationError``: a setting refused before training starts; the ``epo`` command prints it as one line."""


class ConfigurationError(ValueError):
    """A setting that cannot work, with a message that names it and what to change (exit status 2, no traceback)."""
