"""The one error type of the export package."""


class ExportError(ValueError):
    """Bad export input or a failed conversion / numeric check; the message names the value or component."""
