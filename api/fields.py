"""Checks for the text that callers send us, shared by every route.

Both databases refuse some strings Python accepts: PostgreSQL cannot store NUL characters, and
lone UTF-16 surrogates (valid in JSON escapes, invalid in UTF-8) cannot be encoded at all.
Rejecting them here turns what would be a 500 from the driver into a 400 naming the field.
"""

from datetime import UTC, datetime

from api.errors import ValidationError

MAX_TEXT_LENGTH = 4096  # any text field without a tighter limit of its own


def is_storable(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value, field: str, *, required: bool = True, max_length: int = MAX_TEXT_LENGTH) -> str | None:
    """A string field: present (unless optional), a string, storable, not too long."""
    if value is None:
        if required:
            raise ValidationError(field, "is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if required and not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > max_length:
        raise ValidationError(field, f"must be at most {max_length} characters")
    if not is_storable(value):
        raise ValidationError(field, "must be valid UTF-8 text without NUL characters")
    return value


def timestamp(value, field: str):
    """An ISO 8601 moment ("2030-01-01T00:00:00Z"), as the naive UTC datetime the database
    keeps."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationError(field, "must be an ISO 8601 timestamp string")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(field, "must be an ISO 8601 timestamp string") from None
    if moment.tzinfo is None:
        raise ValidationError(field, "must name its time zone (end it with Z for UTC)")
    return moment.astimezone(UTC).replace(tzinfo=None)
