"""One exception family for everything a user can get wrong.

Each class carries the CLI exit code for its kind of failure, so scripts can
tell a bad profile from a failed accuracy gate without parsing messages.
Bugs are not EdgeSDKError: they keep their traceback.
"""


class EdgeSDKError(Exception):
    """Base class: the message says what was wrong and what to do."""

    exit_code = 1


class OptionError(EdgeSDKError):
    """An option value is out of range or contradicts another."""

    exit_code = 2


class ProfileError(EdgeSDKError):
    """A device profile is unknown or malformed."""

    exit_code = 3


class ModelLoadError(EdgeSDKError):
    """The model file is missing, unreadable, not a model, or unsafe to load."""

    exit_code = 4


class DataError(EdgeSDKError):
    """Calibration/validation/fine-tune data is missing or does not fit the model."""

    exit_code = 5


class ConversionError(EdgeSDKError):
    """The converter could not produce an artifact that meets the profile."""

    exit_code = 6


class ValidationFailed(EdgeSDKError):
    """The artifact's accuracy fell outside the budget; carries the figures."""

    exit_code = 7

    def __init__(self, message, figures=None):
        super().__init__(message)
        self.figures = figures or {}


class OutputError(EdgeSDKError):
    """The output location cannot be written."""

    exit_code = 8


class RuntimeMissing(EdgeSDKError):
    """No runtime that can execute the artifact is installed."""

    exit_code = 9

    def __init__(self, message: str, fmt: str | None = None):
        super().__init__(message)
        self.fmt = fmt  # set when only artifacts of this format are out of reach there (a fleet uses the host
        #                 for the others)


class BenchmarkError(EdgeSDKError):
    """The on-device runner failed or returned something unreadable."""

    exit_code = 10


class DeployError(EdgeSDKError):
    """Connecting to, or running on, a device failed."""

    exit_code = 11


class HostKeyError(DeployError):
    """The device's host key is unknown (and not accepted) or has changed."""

    exit_code = 12


class ConnectionLost(DeployError):
    """The link to the device died mid-way."""

    exit_code = 13


class ResultsError(EdgeSDKError):
    """The results database is missing a run or cannot be used."""

    exit_code = 14


class BudgetExceeded(EdgeSDKError):
    """The wall-time budget (--budget) ran out inside a stage; nothing half-made was kept."""

    exit_code = 15
