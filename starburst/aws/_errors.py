"""Reading botocore ClientErrors (no botocore import: the modules using this stay light)."""

from __future__ import annotations


def error_code(exc: Exception) -> str:
    """The AWS error code of a ClientError (``""`` when there is none)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")
