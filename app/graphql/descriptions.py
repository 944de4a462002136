"""Descriptions that state a limit, built from the models' own constants and field metadata, so
the schema's text follows a limit when the models change it instead of restating it."""

from __future__ import annotations

from pydantic import TypeAdapter

from app.models import METADATA_MAX_BYTES, ExternalId

#: An external_id's longest length, as the models document it (the JSON schema of `ExternalId`).
EXTERNAL_ID_MAX: int = TypeAdapter(ExternalId).json_schema()["maxLength"]

EXTERNAL_ID = f"1-{EXTERNAL_ID_MAX} characters of A-Z a-z 0-9 . _ : -"


def size(n_bytes: int) -> str:
    """A size as a reader would write it: whole KiB when it is one, else bytes."""
    if n_bytes % 1024 == 0:
        return f"{n_bytes // 1024} KiB"
    return f"{n_bytes:,} bytes"


def at_most(chars: int) -> str:
    return f"At most {chars} characters"


#: The start of every metadata input's description; each adds what leaving it out does.
METADATA = f"A JSON object of at most {size(METADATA_MAX_BYTES)}"
