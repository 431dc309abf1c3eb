"""A generation request's fields, each once: its names, type, rule, limit, default and the
places that take it.

The frontend's check of POST /prompt, the backend's parsing of POST /generate, the engine's
check of a GenerationRequest, the job's Redis hash, the library entry and the OpenAPI document
(tests/test_request_fields.py) all follow this table. Each side reads the values its own way
(the original UI sends numbers as strings; the backend protocol is strict JSON), but a value's
rule is checked by its field alone (`Field.check`), and each side words the one FieldError.

Plain dataclasses rather than pydantic: the two sides parse differently on purpose, their
errors must stay worded as the API has always worded them, and a rule here is a bound or two.
"""
from __future__ import annotations

from dataclasses import dataclass

from playground.limits import (
    DEFAULT_KEEP_ROWS,
    IMAGE_CODES,
    IMAGE_COUNTS,
    MAX_CANDIDATES,
    MAX_IMAGES,
    MAX_KEEP_ROWS,
    MAX_SEED,
    MAX_TEXT_LENGTH,
)

# Where a field is taken.
PROMPT = "POST /prompt"  # the public API, checked by the frontend
UPSCALE = "POST /upscale"  # the public API's upscale of a library picture, checked by the frontend
JOB = "job"  # the job's Redis hash (playground.queue.Job)
GENERATE = "POST /generate"  # the backend protocol, checked by the backend
ENGINE = "engine"  # backend.engine's GenerationRequest
ENTRY = "library entry"  # a job's entry in the library (GET /getlibrary)


def number_text(number: float) -> str:
    """A number as a rule or an error states it: an int whole, a float shortest (0.5, 1)."""
    return str(number) if isinstance(number, int) else f"{number:g}"


@dataclass(frozen=True)
class Bounds:
    """A number's range; `above`: the minimum itself is refused. `minimum_name` names a minimum
    taken from another field of the request ("num_images (6)")."""

    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    minimum_name: str | None = None

    def _low_words(self) -> str:
        low = number_text(self.minimum)
        return f"{self.minimum_name} ({low})" if self.minimum_name else low

    def words(self) -> str:
        """The whole rule: "between 1 and 15", "greater than 0 and at most 1"."""
        if self.minimum is not None and self.maximum is not None and not self.above:
            return f"between {self._low_words()} and {number_text(self.maximum)}"
        parts = []
        if self.minimum is not None:
            parts.append(f"{'greater than' if self.above else 'at least'} {self._low_words()}")
        if self.maximum is not None:
            parts.append(f"at most {number_text(self.maximum)}")
        return " and ".join(parts)

    def broken(self, number: float) -> str | None:
        """The part of the rule that `number` breaks, in words; None when it keeps it."""
        low_ok = self.minimum is None or (number > self.minimum if self.above else number >= self.minimum)
        high_ok = self.maximum is None or number <= self.maximum
        if low_ok and high_ok:
            return None
        if self.minimum is not None and self.maximum is not None and not self.above:
            return self.words()
        if not low_ok:
            return Bounds(self.minimum, None, self.above, self.minimum_name).words()
        return Bounds(None, self.maximum).words()


class FieldError(ValueError):
    """A value its field's rule refuses: `broken` is the part of `bounds` it breaks. Its text
    is how the backend and the engine say it; the frontend adds the value."""

    def __init__(self, field: str, bounds: Bounds, broken: str):
        self.field, self.bounds, self.broken = field, bounds, broken
        super().__init__(f"{field} must be {bounds.words()}")


@dataclass(frozen=True)
class Field:
    name: str  # the job's, the backend protocol's and the engine's name
    kind: type  # int, float, bool or str
    takes: frozenset[str]  # where it is taken (PROMPT, JOB, GENERATE, ENGINE, ENTRY)
    bounds: Bounds | None = None  # a number's range (a str's: its length)
    default: object = None  # when not given; None: the model's value, or not asked for
    model_default: float | None = None  # a sampling value's when not given (the engine's)
    prompt_name: str | None = None  # its name in the public request (POST /prompt, /upscale), when another
    entry_name: str | None = None  # its name in a library entry and a PNG's text, when another
    note: str = ""  # said after the rule in POST /prompt's 400
    required: bool = False  # the public request (POST /prompt, /upscale) refuses a body without it

    @property
    def public_name(self) -> str:
        return self.prompt_name or self.name

    @property
    def library_name(self) -> str:
        return self.entry_name or self.name

    def check(self, number: float, bounds: Bounds | None = None) -> float:
        """`number` if it keeps the rule (`bounds`: this request's, e.g. the served model's
        codebook), else FieldError."""
        bounds = bounds or self.bounds
        broken = bounds.broken(number)
        if broken is not None:
            raise FieldError(self.name, bounds, broken)
        return number


_EVERYWHERE = frozenset({PROMPT, JOB, GENERATE, ENGINE, ENTRY})
_NOT_ENGINE = _EVERYWHERE - {ENGINE}

TEXT = Field("text", str, _EVERYWHERE, Bounds(1, MAX_TEXT_LENGTH), entry_name="text_prompt", required=True)
# POST /prompt offers IMAGE_COUNTS; the backend makes up to MAX_IMAGES; the engine draws every
# candidate (CANDIDATES' maximum).
NUM_IMAGES = Field("num_images", int, _EVERYWHERE, Bounds(1, MAX_IMAGES), required=True)
SEED = Field("seed", int, _EVERYWHERE, Bounds(0, MAX_SEED), default=0, note=" (0 = random)")
# The top-k limit is the served model's codebook (IMAGE_CODES until a backend has reported).
TOP_K = Field("top_k", int, _EVERYWHERE, Bounds(1, IMAGE_CODES), model_default=50, prompt_name="gen_top_k",
              entry_name="gen_top_k")
TOP_P = Field("top_p", float, _EVERYWHERE, Bounds(0.0, 1.0, above=True), model_default=1.0, prompt_name="gen_top_p",
              entry_name="gen_top_p")
TEMPERATURE = Field("temperature", float, _EVERYWHERE, Bounds(0.0, above=True), model_default=1.0)
CONDITION_SCALE = Field("condition_scale", float, _EVERYWHERE, Bounds(0.0), model_default=10.0)
SAMPLING = (TOP_K, TOP_P, TEMPERATURE, CONDITION_SCALE)
# Best of N: at least num_images; None: num_images.
CANDIDATES = Field("candidates", int, _NOT_ENGINE, Bounds(2, MAX_CANDIDATES))
RANK = Field("rank", bool, frozenset({PROMPT, JOB, GENERATE}))
MODEL = Field("model", str, frozenset({PROMPT, JOB, ENTRY}), Bounds(None, 200))
KEEP_PREVIEWS = Field("keep_previews", bool, frozenset({PROMPT, JOB, ENTRY}), default=False)
# A continuation's start: a library picture or an upload in POST /prompt; in the job, how its
# codes were obtained and the codes or the picture, which the backend is given.
INIT_IMAGE = Field("init_image", str, frozenset({PROMPT, JOB, ENTRY}))
INIT_IMAGE_DATA = Field("init_image_data", str, frozenset({PROMPT}))
INIT_SOURCE = Field("init_source", str, frozenset({JOB, ENTRY}))
INIT_CODES = Field("init_codes", str, frozenset({JOB, GENERATE, ENGINE}))
INIT_PICTURE = Field("init_picture", str, frozenset({JOB, GENERATE}))
KEEP_ROWS = Field("keep_rows", int, _EVERYWHERE, Bounds(1, MAX_KEEP_ROWS), default=DEFAULT_KEEP_ROWS)
EXTEND = Field("extend", str, _NOT_ENGINE)
EXTEND_CHOICES = ("down",)
# An upscale job (POST /upscale): the library picture it enlarges ("library/<queue_id>/<image>.png",
# `path` in the request) and the upscaler asked for (`model` in the request; None: the backend's).
UPSCALE_OF = Field("upscale_of", str, frozenset({UPSCALE, JOB, ENTRY}), prompt_name="path", required=True)
UPSCALE_MODEL = Field("upscale_model", str, frozenset({UPSCALE, JOB, ENTRY}), Bounds(None, 200), prompt_name="model")
# POST /prompt's `upscale`: once the job is done, each of its pictures is queued for an upscale by
# this much (the upscalers' scale, UPSCALE_CHOICES; None, 0: not asked). Not sent to the backend:
# the scheduler queues the upscale jobs in the job's commit (docs/upscaler.md).
UPSCALE_AFTER = Field("upscale", int, frozenset({PROMPT, JOB, ENTRY}))
UPSCALE_CHOICES = (4,)

# A grid sweep (playground/grid.py, whose rules it follows): an object in the public request and
# the backend protocol, its JSON text in the job.
GRID = Field("grid", str, frozenset({PROMPT, JOB, GENERATE, ENTRY}))

FIELDS = (TEXT, NUM_IMAGES, SEED, *SAMPLING, CANDIDATES, RANK, MODEL, KEEP_PREVIEWS, INIT_IMAGE,
          INIT_IMAGE_DATA, INIT_SOURCE, INIT_CODES, INIT_PICTURE, KEEP_ROWS, EXTEND, UPSCALE_OF, UPSCALE_MODEL,
          UPSCALE_AFTER, GRID)
START = (INIT_IMAGE, INIT_IMAGE_DATA, INIT_SOURCE, INIT_CODES, INIT_PICTURE, KEEP_ROWS, EXTEND)


def taken_by(place: str, fields: tuple[Field, ...] | None = None) -> tuple[Field, ...]:
    """The fields (of the table, or of `fields`) that `place` takes, in their order."""
    return tuple(field for field in (FIELDS if fields is None else fields) if place in field.takes)


def candidate_bounds(num_images: int) -> Bounds:
    """How many candidates a job of `num_images` may draw."""
    return Bounds(num_images, CANDIDATES.bounds.maximum, minimum_name=NUM_IMAGES.name)


def image_count_choices() -> str:
    """POST /prompt's num_images, in words: "2, 4, 6 or 8"."""
    return ", ".join(map(str, IMAGE_COUNTS[:-1])) + f" or {IMAGE_COUNTS[-1]}"
