"""Errors a user can act on. Each message names the problem and the fix."""


class BlendinError(Exception):
    """Base class: anything the user can fix by changing input, config or environment."""


class ConfigError(BlendinError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class ModelLoadError(BlendinError, OSError):
    """A model or tokenizer could not be found or loaded."""


class PromptError(BlendinError, ValueError):
    """A prompt cannot be rendered for a model (empty, or no chat template)."""


class RunBusyError(BlendinError, RuntimeError):
    """Another process is writing the same run directory."""
