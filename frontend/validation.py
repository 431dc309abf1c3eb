"""Checking a POST /prompt body (API.md Part 1) and turning it into job parameters.

The original UI sends numbers as strings (num_images "6", advanced-page fields straight from
their inputs), so numeric strings are accepted wherever a number is; an empty string or null
in an optional field means "use the model's default".
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from playground.limits import IMAGE_CODES, IMAGE_COUNTS, MAX_SEED, MAX_TEXT_LENGTH

_IMAGE_COUNT_CHOICES = ", ".join(map(str, IMAGE_COUNTS[:-1])) + f" or {IMAGE_COUNTS[-1]}"  # "2, 4, 6 or 8"
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
MAX_MODEL_NAME = 200


class ValidationError(ValueError):
    """A request the API refuses with 400; `field` names the culprit."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a ValidationError saying why it is not one."""
    if not body.strip():
        raise ValidationError(None, "the body is empty; send a JSON object")
    try:
        value = json.loads(body)
    except UnicodeDecodeError:
        raise ValidationError(None, "the body is not UTF-8 text") from None
    except RecursionError:
        raise ValidationError(None, "the body's JSON is nested too deeply") from None
    except ValueError as exc:
        raise ValidationError(None, f"the body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValidationError(None, "the body must be a JSON object")
    return value


def validate_prompt(body: dict[str, Any], image_codes: int = IMAGE_CODES) -> dict[str, Any]:
    """Job parameters from a /prompt body: text, num_images, seed, top_k, top_p, temperature,
    condition_scale, model (None: not asked for; see route_model). Unknown keys are ignored,
    as the original server did. `image_codes` is the largest served codebook: a top-k beyond
    it means nothing."""
    return {
        "text": _text(body.get("text"), MAX_TEXT_LENGTH),
        "num_images": _num_images(body.get("num_images")),
        "seed": _seed(body.get("seed", 0)),
        "top_k": _optional_int(body, "gen_top_k", minimum=1, maximum=image_codes),
        "top_p": _optional_float(body, "gen_top_p", above=0.0, at_most=1.0),
        "temperature": _optional_float(body, "temperature", above=0.0),
        "condition_scale": _optional_float(body, "condition_scale", at_least=0.0),
        "model": _optional_model(body.get("model")),
    }


def route_model(asked: str | None, served: dict[str, int | None], default: str) -> str:
    """The model a job runs on. `served`: each model the live backends serve -> its codebook.
    Asked for, it must be served; not asked, the default when served, else the first served;
    with nothing served yet (the backends still starting): "" (any backend takes it), or the
    default when asked for by name."""
    if asked is not None:
        if asked in served or (not served and asked == default):
            return asked
        choices = ", ".join(sorted(served)) or "none yet"
        raise ValidationError("model", f"{asked!r} is not served by any backend (served: {choices})")
    if not served:
        return ""
    return default if default in served else sorted(served)[0]


def _optional_model(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_MODEL_NAME or not value.isprintable():
        raise ValidationError("model", f"must be the name of a served model, not {_describe(value)}")
    return value


def _text(value: Any, max_chars: int) -> str:
    if value is None:
        raise ValidationError("text", "is required")
    if not isinstance(value, str):
        raise ValidationError("text", f"must be a string, not {_json_type(value)}")
    text = value.strip()
    if not text:
        raise ValidationError("text", "must not be empty")
    if len(text) > max_chars:
        raise ValidationError("text", f"is {len(text)} characters; at most {max_chars} are allowed")
    if "\x00" in text:
        raise ValidationError("text", "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON "\ud800" escapes decode to lone surrogates
        raise ValidationError("text", "contains invalid unicode (a lone surrogate)") from None
    return text


def _num_images(value: Any) -> int:
    if value is None:
        raise ValidationError("num_images", f"is required ({_IMAGE_COUNT_CHOICES})")
    number = _as_int(value, "num_images")
    if number not in IMAGE_COUNTS:
        raise ValidationError("num_images", f"must be {_IMAGE_COUNT_CHOICES}, not {_describe(value)}")
    return number


def _seed(value: Any) -> int:
    if value is None or value == "":
        return 0
    seed = _as_int(value, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise ValidationError("seed", f"must be between 0 and {MAX_SEED} (0 = random), not {seed}")
    return seed


def _optional_int(body: dict, field: str, minimum: int, maximum: int) -> int | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    number = _as_int(value, field)
    if not minimum <= number <= maximum:
        raise ValidationError(field, f"must be between {minimum} and {maximum}, not {number}")
    return number


def _optional_float(body: dict, field: str, above: float | None = None,
                    at_least: float | None = None, at_most: float | None = None) -> float | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    number = _as_float(value, field)
    if above is not None and not number > above:
        raise ValidationError(field, f"must be greater than {above:g}, not {number:g}")
    if at_least is not None and not number >= at_least:
        raise ValidationError(field, f"must be at least {at_least:g}, not {number:g}")
    if at_most is not None and not number <= at_most:
        raise ValidationError(field, f"must be at most {at_most:g}, not {number:g}")
    return number


def _as_int(value: Any, field: str) -> int:
    # bool is an int subclass in Python, but `true` is not a number in JSON.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    raise ValidationError(field, f"must be an integer, not {_describe(value)}")


def _as_float(value: Any, field: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and len(value) <= 40:
        try:
            number = float(value.strip())
        except ValueError:
            raise ValidationError(field, f"must be a number, not {_describe(value)}") from None
    else:
        raise ValidationError(field, f"must be a number, not {_describe(value)}")
    if not math.isfinite(number):
        raise ValidationError(field, "must be a finite number")
    return number


def _describe(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 40 else f"a {len(text)}-character {_json_type(value)[2:]}"
    return _json_type(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
