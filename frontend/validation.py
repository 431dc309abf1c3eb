"""Checking a POST /prompt body (API.md Part 1) and turning it into job parameters.

The original UI sends numbers as strings (num_images "6", advanced-page fields straight from
their inputs), so numeric strings are accepted wherever a number is; an empty string or null
in an optional field means "use the model's default".
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

import multipart

from playground import grid as grids
from playground import pictures
from playground import request_fields as fields
from playground.limits import IMAGE_CODES, IMAGE_COUNTS, MAX_UPSCALE_SIDE
from playground.queue import UUID_PATTERN
from playground.queue.job import upscale_request
from playground.request_fields import Bounds, Field, FieldError, number_text

_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
LIBRARY_IMAGE = re.compile(rf"/?library/({UUID_PATTERN})/({UUID_PATTERN})\.png")
# A data: URL's head, any media type and parameters: "data:image/png;base64,".
_DATA_URL = re.compile(r"\s*data:[a-z0-9.+/=;-]{0,100};base64,", re.IGNORECASE)
_URL_SAFE = str.maketrans("-_", "+/")


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


# A POST /prompt form has 15 fields, and a part needs Content-Disposition and perhaps
# Content-Type: these caps bound the parser's work on any body, checked as it goes.
MAX_FORM_PARTS = 32
MAX_PART_HEADERS = 4
MAX_PART_HEADER_BYTES = 1024
_FORM_CHUNK = 64 * 1024
_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")


def parse_form_data(body: bytes, content_type: str) -> dict[str, Any]:
    """A multipart/form-data body as the JSON object it stands for: every field a string, except
    a file in `init_image_data`, which becomes its bytes. A file input left empty (a browser
    sends `filename=""` and no content) is left out, as a field never sent."""
    _, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 70 or not boundary.isascii():  # RFC 2046: 1 to 70 characters
        raise ValidationError(None, "the multipart body needs a boundary of 1 to 70 ASCII characters "
                                    "in its Content-Type")
    fields: dict[str, Any] = {}
    parser = multipart.PushMultipartParser(
        boundary, len(body), max_header_size=MAX_PART_HEADER_BYTES, max_header_count=MAX_PART_HEADERS,
        max_segment_count=MAX_FORM_PARTS, strict=True)
    part, content = None, bytearray()
    try:
        with parser:
            for offset in range(0, len(body), _FORM_CHUNK):
                for event in parser.parse(body[offset:offset + _FORM_CHUNK]):
                    if isinstance(event, multipart.MultipartSegment):
                        part = event
                        _check_part(part, fields)
                        content = bytearray()
                    elif event is not None:
                        content += event
                    else:
                        _add_field(fields, part, bytes(content))
    except multipart.ParserLimitReached as error:
        raise ValidationError(None, f"the multipart body is over a limit ({error}): at most {MAX_FORM_PARTS} "
                                    f"parts of at most {MAX_PART_HEADERS} headers of {MAX_PART_HEADER_BYTES} "
                                    f"bytes") from None
    except multipart.MultipartError as error:
        raise ValidationError(None, f"the multipart body is malformed: {error}") from None
    return fields


def _check_part(part, fields: dict[str, Any]) -> None:
    """A part's headers, before its content is read: named once, no nested or encoded parts."""
    field = part.name or None
    if field is None:
        raise ValidationError(None, "every part of a multipart body needs a name")
    if field in fields:
        raise ValidationError(field, "is given twice in the multipart body")
    if (part.content_type or "").startswith("multipart/"):
        raise ValidationError(field, "is a nested multipart part; send the file itself")
    encoding = (part.header("Content-Transfer-Encoding") or "binary").lower()
    if encoding not in _IDENTITY_ENCODINGS:
        raise ValidationError(field, f"has Content-Transfer-Encoding {encoding[:40]!r}; send the file's own "
                                     f"bytes (RFC 7578)")


def _add_field(fields: dict[str, Any], part, content: bytes) -> None:
    if part.name == "init_image_data" and part.filename is not None:
        if part.filename or content:  # else a file input left empty
            fields[part.name] = content
        return
    try:
        fields[part.name] = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(part.name, "is not UTF-8 text") from None


def validate_prompt(body: dict[str, Any], image_codes: int = IMAGE_CODES) -> dict[str, Any]:
    """Job parameters from a /prompt body: text, num_images, seed, top_k, top_p, temperature,
    condition_scale, model (None: not asked for; see route_model), candidates and rank (Best
    of N; None: not asked for, the backend decides). Unknown keys are ignored,
    as the original server did. `image_codes` is the largest served codebook: a top-k beyond
    it means nothing. A grid sweep (`grid`, playground/grid.py) draws one picture per cell:
    num_images is then its cells (the body's must be left out or 1), and with a grid of
    prompts the body's text may be left out (the job's title: the prompts, joined)."""
    grid = _grid(body)
    num_images = _num_images(body.get("num_images")) if grid is None else _grid_images(body, grid)
    return {
        "text": _job_text(body, grid),
        "num_images": num_images,
        "candidates": _candidates(body, num_images) if grid is None else None,
        "grid": None if grid is None else grid.text(),
        "rank": _optional_bool(body.get("rank"), "rank"),
        "seed": _number(body, fields.SEED),
        "top_k": _number(body, fields.TOP_K, Bounds(1, image_codes)),
        **{field.name: _number(body, field) for field in fields.SAMPLING[1:]},
        "model": _optional_model(body.get("model")),
        "keep_previews": _flag(body, "keep_previews"),
        fields.UPSCALE_AFTER.name: _upscale_after(body.get(fields.UPSCALE_AFTER.public_name)),
    }


def _upscale_after(value: Any) -> int | None:
    """`upscale`: a scale the upscalers give (UPSCALE_CHOICES), or absent, null, "" or 0 for none;
    whether any backend upscales is route_upscaler's to say."""
    field = fields.UPSCALE_AFTER.public_name
    if value is None or value == "":
        return None
    number = _as_int(value, field)
    if number == 0:
        return None
    if number not in fields.UPSCALE_CHOICES:
        choices = " or ".join(map(str, fields.UPSCALE_CHOICES))
        raise ValidationError(field, f"must be {choices} (or 0 for none), not {_describe(value)}")
    return number


def _grid(body: dict) -> grids.Grid | None:
    """The body's grid sweep (an object, or its JSON text from a form); absent, null or "": none."""
    value = body.get(fields.GRID.public_name)
    if value is None or value == "":
        return None
    try:
        return grids.parse_grid(value, _grid_value)
    except grids.GridError as error:
        name = fields.GRID.public_name
        raise ValidationError(name, error.message if error.where == name else str(error)) from None


def _grid_value(field: Field, value: Any) -> float:
    """A grid's number as the body's numbers come: a JSON number, or a string of one."""
    return _as_int(value, "") if field.kind is int else _as_float(value, "")


def _grid_images(body: dict, grid: grids.Grid) -> int:
    """A grid job's pictures: one per cell (Best of N and a start are not for grids)."""
    if body.get("num_images") not in (None, "", 1, "1"):
        raise ValidationError("num_images", f"must be 1 or left out with a grid: it draws one picture per cell "
                                            f"({grid.size}), not {_describe(body.get('num_images'))}")
    for name in ("candidates", "init_image", "init_image_data"):
        if body.get(name) not in (None, ""):
            raise ValidationError(name, "must be left out with a grid: it draws one fresh picture per cell")
    return grid.size


def check_grid(grid: grids.Grid, image_codes: int, model: str, cells_max: int | None) -> None:
    """A grid against what serves it: its top-k values within the model's codebook, its cells
    within the most its ready backends make (`cells_max`; None: none ready, MAX_GRID_CELLS holds)."""
    for name in ("x", "y"):
        axis = getattr(grid, name)
        if axis is not None and axis.field is fields.TOP_K:
            for index, value in enumerate(axis.values):
                if value > image_codes:
                    raise ValidationError(fields.GRID.public_name, f"grid.{name}.values[{index}] (top_k) must be at "
                                                                   f"most {image_codes} for model {model}, not {value}")
    if cells_max is not None and grid.size > cells_max:
        raise ValidationError(fields.GRID.public_name, f"has {grid.size} cells; the backends of model {model} make "
                                                       f"at most {cells_max}" if cells_max else
                              f"model {model}'s backends make no grids")


def _job_text(body: dict, grid: grids.Grid | None) -> str:
    """The body's text; a grid of prompts' when the body has none: its prompts, joined."""
    prompts = None if grid is None else grid.axis_of(fields.TEXT)
    if prompts is not None and body.get("text") in (None, ""):
        return " · ".join(prompts.values)[:int(fields.TEXT.bounds.maximum)]
    return _text(body.get("text"), fields.TEXT.bounds.maximum)


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
    return _optional_name(value, fields.MODEL, "a served model")


def validate_start(body: dict[str, Any], read_library_image: Callable[[str, str], bytes | None],
                   max_upload_bytes: int, image_codes: int = IMAGE_CODES,
                   decode: Callable[[Callable[[], dict]], dict] = lambda work: work()) -> dict[str, Any]:
    """A continuation's job fields (request_fields.START) from a /prompt body,
    or {} for a fresh job. The start is a library image (`init_image`) or an upload
    (`init_image_data`: base64 text, or a form's file as bytes); a PNG of ours gives its codes,
    any other picture is squared here and encoded by the backend's VQGAN. Only an absent (or
    null) `init_image_data` means "no upload". `read_library_image(queue_id, image_id)` gives a
    library PNG's bytes, None if there is none; `decode(work)` runs the picture's decoding and
    returns what it returns (the frontend runs it in its few decoding threads)."""
    path, data = body.get("init_image"), body.get("init_image_data")
    path = None if path == "" else path
    if path is None and data is None:
        for name in ("keep_rows", "extend"):
            if body.get(name) not in (None, ""):
                raise ValidationError(name, "needs a start: init_image or init_image_data")
        return {}
    if path is not None and data is not None:
        raise ValidationError("init_image", "give init_image or init_image_data, not both")
    keep_rows = _number(body, fields.KEEP_ROWS)
    extend = body.get("extend")
    if extend not in (None, "", *fields.EXTEND_CHOICES):
        raise ValidationError("extend", f'must be "down" or null, not {_describe(extend)}')
    if path is not None:
        field = "init_image"
        found = LIBRARY_IMAGE.fullmatch(path) if isinstance(path, str) else None
        if not found:
            raise ValidationError(field, "must look like library/<queue_id>/<image-uuid>.png")
        content = read_library_image(found.group(1), found.group(2))
        if content is None:
            raise ValidationError(field, f"there is no library image {path[:100]}")
        start = {"init_image": f"library/{found.group(1)}/{found.group(2)}.png"}
    else:
        field = "init_image_data"
        content = data if isinstance(data, bytes) else _decode_upload(data, max_upload_bytes)
        if not content:
            raise ValidationError(field, "is empty; send a picture, or leave the field out for a fresh job")
        if len(content) > max_upload_bytes:
            raise ValidationError(field, f"is {len(content)} bytes; at most {max_upload_bytes} are allowed")
        start = {}
    def decoded() -> dict[str, str]:
        try:
            picture = pictures.open_picture(content, fit=pictures.START_SIDE)
        except ValueError as error:
            raise ValidationError(field, str(error)) from None
        with picture:  # its memory goes before the next decode starts
            return _start_of(picture, field, image_codes, keep_rows, extend)

    start.update(decode(decoded))
    if data is not None and extend and start["init_source"] == "codes":
        start["init_picture"] = base64.b64encode(content).decode("ascii")  # an upload of ours tops the taller pictures
    return {**start, "keep_rows": keep_rows, "extend": extend or None}


def validate_upscale(body: dict[str, Any], library_entry: Callable[[str], dict | None],
                     read_library_image: Callable[[str, str], bytes | None],
                     upscaled: Callable[[str], str | None]) -> dict[str, Any]:
    """An upscale job's fields from a POST /upscale body: `path`, a picture a library entry lists
    (generated or extended), neither upscaled already nor itself an upscale, at most
    MAX_UPSCALE_SIDE pixels on its longest side; `model`, the upscaler asked for (checked by
    route_upscaler). The job's text is the picture's prompt; unknown keys are ignored, as
    /prompt does. `library_entry(queue_id)` gives a job's entry, None if there is none."""
    field = fields.UPSCALE_OF.public_name
    path = body.get(field)
    found = LIBRARY_IMAGE.fullmatch(path) if isinstance(path, str) else None
    if not found:
        raise ValidationError(field, "must look like library/<queue_id>/<image-uuid>.png")
    path = f"library/{found.group(1)}/{found.group(2)}.png"
    entry = library_entry(found.group(1))
    listed = entry is not None and path in [*entry.get("generated_images", []), *entry.get("extended_images", [])]
    content = read_library_image(found.group(1), found.group(2)) if listed else None
    if content is None:
        raise ValidationError(field, f"there is no library picture {path}")
    made = upscaled(path)
    if made is not None:
        raise ValidationError(field, f"is upscaled already: {made}")
    try:
        with pictures.open_picture(content) as picture:
            size, chunks = picture.size, pictures.text_chunks(picture)
    except ValueError as error:
        raise ValidationError(field, str(error)) from None
    if pictures.UPSCALED_FROM_KEY in chunks:
        raise ValidationError(field, f"is itself an upscale of {chunks[pictures.UPSCALED_FROM_KEY][:100]}")
    if max(size) > MAX_UPSCALE_SIDE:
        raise ValidationError(field, f"is {size[0]}×{size[1]}; pictures of at most {MAX_UPSCALE_SIDE} pixels "
                                     f"on a side are upscaled")
    return upscale_request(path, entry.get(fields.TEXT.library_name) or path,
                           _optional_name(body.get(fields.UPSCALE_MODEL.public_name), fields.UPSCALE_MODEL,
                                          "an upscaler"))


def route_upscaler(asked: str | None, served: set[str], ready: bool, field: str | None = None) -> str | None:
    """The upscaler an upscale job runs with: asked for, one a live backend serves; not asked,
    None (the backend's own), unless `ready` backends serve none at all. `field`: the request's
    field a refusal names (POST /upscale's `model`, or POST /prompt's `upscale`)."""
    field = field or fields.UPSCALE_MODEL.public_name
    choices = ", ".join(sorted(served)) or "none"
    if asked is not None and asked not in served:
        raise ValidationError(field, f"{asked!r} is not an upscaler any backend serves (served: {choices})")
    if asked is None and ready and not served:
        raise ValidationError(field, "no backend upscales (their UPSCALE_MODEL is none)")
    return asked


def _optional_name(value: Any, field: Field, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > field.bounds.maximum or not value.isprintable():
        raise ValidationError(field.public_name, f"must be the name of {what}, not {_describe(value)}")
    return value


def _start_of(picture, field: str, image_codes: int, keep_rows: int, extend: str | None) -> dict[str, str]:
    """A decoded start's codes (a PNG of ours), else the picture squared for the backend to encode."""
    if grids.SHEET_KEY in pictures.text_chunks(picture):
        raise ValidationError(field, "is a grid's sheet, not a picture to continue; start from one of its cells")
    codes = _codes_of(picture, field, image_codes)
    try:
        pictures.check_start(None if codes is None else len(codes), picture.size, keep_rows, extend)
    except ValueError as error:
        raise ValidationError(field, str(error)) from None
    if codes is None:
        return {"init_source": "encoded",
                "init_picture": base64.b64encode(pictures.png_bytes(pictures.square(picture))).decode("ascii")}
    return {"init_source": "codes", "init_codes": pictures.pack_codes(codes)}


def _decode_upload(data: Any, max_bytes: int) -> bytes:
    """Base64 as common tools write it: wrapped in lines or spaced, padded or not, standard or
    URL-safe, maybe a data: URL."""
    if not isinstance(data, str):
        raise ValidationError("init_image_data", f"must be a base64 string, not {_json_type(data)}")
    prefix = _DATA_URL.match(data)
    text = data[prefix.end():] if prefix else data
    # Four characters for each three bytes, plus room for line breaks (76 to a line) and padding.
    if len(text) > (max_bytes + 2) // 3 * 4 * 78 // 76 + 8:
        raise ValidationError("init_image_data", f"is over {max_bytes} bytes, the most a picture may have")
    text = "".join(text.split()).rstrip("=").translate(_URL_SAFE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("init_image_data", "is not valid base64 (standard or URL-safe)") from None


def _codes_of(picture, field: str, image_codes: int) -> list[int] | None:
    """The codes a PNG of ours carries, None for any other picture."""
    text = pictures.text_chunks(picture).get(pictures.CODES_KEY)
    if text is None:
        return None
    try:
        codes = pictures.unpack_codes(text)
    except ValueError as error:
        raise ValidationError(field, f"carries broken codes: {error}") from None
    if codes and max(codes) >= image_codes:
        raise ValidationError(field, f"carries codes of a model with a larger codebook than the {image_codes} served")
    return codes


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
        raise ValidationError("num_images", f"is required ({fields.image_count_choices()})")
    number = _as_int(value, "num_images")
    if number not in IMAGE_COUNTS:
        raise ValidationError("num_images", f"must be {fields.image_count_choices()}, not {_describe(value)}")
    return number


def _candidates(body: dict, num_images: int) -> int | None:
    """How many candidates to generate; None: num_images."""
    number = _number(body, fields.CANDIDATES, fields.candidate_bounds(num_images))
    return None if number == num_images else number


def _optional_bool(value: Any, field: str) -> bool | None:
    """true/false (or, from a form, "true"/"false"); null or "" for the default."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValidationError(field, f"must be true or false, not {_describe(value)}")


def _flag(body: dict, field: str) -> bool:
    """An option that is off unless set: a JSON boolean, or a form's text for one."""
    value = body.get(field)
    if value is None or value == "" or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "on", "off"):
        return value.strip().lower() in ("true", "1", "on")
    raise ValidationError(field, f"must be true or false, not {_describe(value)}")


def _number(body: dict, field: Field, bounds: Bounds | None = None) -> float | None:
    """A number field of the body, checked by its rule (`bounds`: this request's); absent, null
    or "": its default."""
    name = field.public_name
    value = body.get(name)
    if value is None or value == "":
        return field.default
    return check_number(field, _as_int(value, name) if field.kind is int else _as_float(value, name), bounds)


def check_number(field: Field, number: float, bounds: Bounds | None = None, note: str | None = None) -> float:
    """`number` if it keeps its field's rule, else a 400 naming the field, the rule and the number."""
    try:
        return field.check(number, bounds)
    except FieldError as error:
        raise ValidationError(field.public_name, f"must be {error.broken}{field.note if note is None else note}, "
                                                 f"not {number_text(number)}") from None


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
