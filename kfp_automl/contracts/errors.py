"""The one error a contract raises when a file is not what it says it is."""

from __future__ import annotations


class ContractError(ValueError):
    """A contract file (schema, profile, decision, release, model info) is malformed or newer
    than this release reads; the message names the file and the field."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)
