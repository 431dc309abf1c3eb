"""A grid sweep: one job, a list of values for one or two of its fields, one picture per cell.

    {"x": {"field": "temperature", "values": [0.5, 1, 1.5]},
     "y": {"field": "text", "values": ["a fox", "a cat"]}}     (y may be left out)

Cell (column i, row j) is the job's request with x's field set to x's values[i] and y's to
y's values[j]; cells are numbered row by row (j * len(x) + i). An axis names one of GRID_FIELDS
(request_fields' names), two axes name two different fields, an axis has at least 2 values,
and every value keeps its own field's rule (`Field.check`). The cells are at most
MAX_GRID_CELLS, and at most what the serving backend batches (`grid_cells_max` on its /health).
The frontend (from a POST /prompt body, whose numbers may be strings) and the backend (strict
JSON) both parse it here; the sheet that tiles its pictures with their labels is drawn here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from playground import pictures
from playground import request_fields as fields
from playground.limits import MAX_GRID_CELLS
from playground.request_fields import Field, FieldError, number_text

GRID_FIELDS = {field.name: field for field in (*fields.SAMPLING, fields.SEED, fields.TEXT)}
MIN_AXIS_VALUES = 2
AXES = ("x", "y")
SHEET_KEY = "grid_sheet"  # a sheet PNG's text: its grid (JSON); no codes, so never a start or an upscale


def cells_together(slots: int) -> bool:
    """Whether a backend with `slots` slots decodes a grid's cells as one batch (its batch
    runner takes the cells as one group) or, with one slot (no runner), one after another."""
    return slots > 1


class GridError(ValueError):
    """A grid the request may not have; `where` is the part at fault ("grid.x.values[2]")."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where} {message}")


@dataclass(frozen=True)
class Axis:
    field: Field
    values: tuple

    def json(self) -> dict:
        return {"field": self.field.name, "values": list(self.values)}


@dataclass(frozen=True)
class Grid:
    x: Axis
    y: Axis | None = None

    @property
    def columns(self) -> int:
        return len(self.x.values)

    @property
    def rows(self) -> int:
        return 1 if self.y is None else len(self.y.values)

    @property
    def size(self) -> int:
        return self.columns * self.rows

    def axis_of(self, field: Field) -> Axis | None:
        return next((axis for axis in (self.x, self.y) if axis is not None and axis.field is field), None)

    def cells(self) -> list[dict]:
        """Each cell's own values by field name, row by row."""
        rows = [{}] if self.y is None else [{self.y.field.name: value} for value in self.y.values]
        return [{**row, self.x.field.name: value} for row in rows for value in self.x.values]

    def json(self) -> dict:
        return {axis: getattr(self, axis).json() for axis in AXES if getattr(self, axis) is not None}

    def text(self) -> str:
        return json.dumps(self.json(), ensure_ascii=False, separators=(",", ":"))


def parse_grid(value, read_value=None, max_cells: int = MAX_GRID_CELLS) -> Grid:
    """A grid from its JSON (a dict, or its JSON text); GridError naming the part at fault.
    `read_value(field, value)` turns a value into its field's kind (ValueError when it cannot;
    by default a strict JSON number); its field's rule is checked here."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise GridError("grid", "is not valid JSON") from None
    if not isinstance(value, dict) or value.get("x") is None:
        raise GridError("grid", 'must be an object with an axis "x" and maybe "y"')
    unknown = sorted(set(value) - set(AXES))
    if unknown:
        raise GridError("grid", f"has no axis {unknown[0][:40]!r}; its axes are x and y")
    axes = {name: _axis(value[name], f"grid.{name}", read_value or _strict)
            for name in AXES if value.get(name) is not None}
    if "y" in axes and axes["y"].field is axes["x"].field:
        raise GridError("grid.y.field", f"must differ from grid.x.field ({axes['x'].field.name})")
    grid = Grid(axes["x"], axes.get("y"))
    if grid.size > max_cells:
        raise GridError("grid", f"has {grid.columns}×{grid.rows} = {grid.size} cells; at most {max_cells} are made")
    return grid


def _axis(value, where: str, read_value) -> Axis:
    if not isinstance(value, dict):
        raise GridError(where, 'must be an object {"field": ..., "values": [...]}')
    field = GRID_FIELDS.get(value.get("field")) if isinstance(value.get("field"), str) else None
    if field is None:
        raise GridError(f"{where}.field", f"must be one of {', '.join(GRID_FIELDS)}")
    values = value.get("values")
    if not isinstance(values, list) or not MIN_AXIS_VALUES <= len(values) <= MAX_GRID_CELLS:
        raise GridError(f"{where}.values", f"must be a list of {MIN_AXIS_VALUES} to {MAX_GRID_CELLS} values")
    return Axis(field, tuple(_value(field, item, f"{where}.values[{index}]", read_value)
                             for index, item in enumerate(values)))


def _value(field: Field, value, where: str, read_value):
    if field is fields.TEXT:
        if not isinstance(value, str) or not value.strip():
            raise GridError(where, "must be a non-empty string")
        if len(value.strip()) > field.bounds.maximum or "\x00" in value:
            raise GridError(where, f"must be at most {number_text(field.bounds.maximum)} characters, no NUL")
        return value.strip()
    try:
        number = read_value(field, value)
        return field.check(number)
    except FieldError as error:
        raise GridError(where, f"({field.name}) must be {error.broken}, not {number_text(number)}") from None
    except ValueError as error:
        raise GridError(where, f"({field.name}) {error}") from None


def _strict(field: Field, value):
    """A value as strict JSON gives it: an integer for an int field, a finite number for a float."""
    if field.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def label(field: Field, value) -> str:
    """A value as the sheet shows it: "temperature 0.5", a prompt as it is."""
    if field is fields.TEXT:
        return value
    return f"{field.library_name} {number_text(value)}"


SHEET_MARGIN = 8
SHEET_FONT_SIZE = 14
SHEET_BACKGROUND = "white"
SHEET_INK = "black"


def sheet(grid: Grid, cells: list[Image.Image]) -> Image.Image:
    """The cells' pictures tiled as the grid, x's values along the top, y's down the left."""
    if len(cells) != grid.size:
        raise ValueError(f"a sheet of {grid.size} cells needs as many pictures, not {len(cells)}")
    font = ImageFont.load_default(SHEET_FONT_SIZE)
    width, height = cells[0].size
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top = SHEET_FONT_SIZE * 3 + 2 * SHEET_MARGIN  # two lines of a column's label

    def fit(text: str, room: int) -> list[str]:
        """`text` in at most two lines of `room` pixels (cut with … beyond)."""
        lines, line = [], ""
        for word in text.split():
            trial = f"{line} {word}".strip()
            if measure.textlength(trial, font=font) <= room or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
        if len(lines) > 2:
            lines = [lines[0], lines[1] + "…"]
        return [_cut(measure, font, text, room) for text in lines]

    left = 0
    if grid.y is not None:
        left = min(width, max(int(measure.textlength(label(grid.y.field, value), font=font))
                              for value in grid.y.values)) + 2 * SHEET_MARGIN
    canvas = Image.new("RGB", (left + grid.columns * width, top + grid.rows * height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for column, value in enumerate(grid.x.values):
        lines = fit(label(grid.x.field, value), width - SHEET_MARGIN)
        draw.multiline_text((left + column * width + width // 2, top // 2), "\n".join(lines), fill=SHEET_INK,
                            font=font, anchor="mm", align="center")
    for row in range(grid.rows):
        if grid.y is not None:
            lines = fit(label(grid.y.field, grid.y.values[row]), left - SHEET_MARGIN)
            draw.multiline_text((SHEET_MARGIN // 2, top + row * height + height // 2), "\n".join(lines),
                                fill=SHEET_INK, font=font, anchor="lm")
        for column in range(grid.columns):
            canvas.paste(cells[row * grid.columns + column].convert("RGB"),
                         (left + column * width, top + row * height))
    return canvas


def sheet_png(grid: Grid, pngs: list[bytes], prompt: str) -> bytes:
    """The sheet of a grid job's pictures as a PNG whose text says it is a sheet (SHEET_KEY: its
    grid), so it is never taken for a picture to continue or upscale."""
    cells = [pictures.open_picture(png) for png in pngs]
    try:
        return pictures.png_bytes(sheet(grid, cells), {SHEET_KEY: grid.text(), "prompt": prompt,
                                                       "software": "dalle-playground"})
    finally:
        for cell in cells:
            cell.close()


def _cut(measure: ImageDraw.ImageDraw, font, text: str, room: int) -> str:
    while len(text) > 1 and measure.textlength(text, font=font) > room:
        text = text[:-2] + "…"
    return text
