"""The table of a generation request's fields (playground/request_fields.py): OpenAPI states it,
every side checks a field by its rule there, and the job carries every field it takes."""
from __future__ import annotations

import dataclasses

import pytest

from backend.engine import GenerationRequest
from backend.generate_request import BadRequest, parse_generate_body
from frontend.openapi import OpenApiDocument
from frontend.validation import ValidationError, validate_prompt, validate_start
from playground import request_fields
from playground.pictures import pack_codes
from playground.queue import Job, encode_job_fields
from playground.request_fields import GENERATE, JOB, PROMPT, UPSCALE, Bounds, taken_by


def _prompt_schema() -> dict:
    return OpenApiDocument.load().document["components"]["schemas"]["PromptRequest"]


def _upscale_schema() -> dict:
    return OpenApiDocument.load().document["components"]["schemas"]["UpscaleRequest"]


def _number_schema(property_schema: dict) -> dict:
    """The integer or number alternative of a property (the others are the form's strings)."""
    choices = property_schema.get("oneOf", [property_schema])
    return next(choice for choice in choices if choice.get("type") in ("integer", "number"))


def test_openapi_takes_the_fields_of_the_table():
    schema = _prompt_schema()
    assert set(schema["properties"]) == {field.public_name for field in taken_by(PROMPT)}
    assert set(schema["required"]) == {field.public_name for field in taken_by(PROMPT) if field.required}


def test_openapi_takes_the_upscale_fields_of_the_table():
    schema = _upscale_schema()
    assert set(schema["properties"]) == {field.public_name for field in taken_by(UPSCALE)}
    assert set(schema["required"]) == {field.public_name for field in taken_by(UPSCALE) if field.required}
    assert schema["properties"]["model"]["maxLength"] == request_fields.UPSCALE_MODEL.bounds.maximum


@pytest.mark.parametrize("field", [field for field in taken_by(PROMPT) if field.kind in (int, float)
                                   and field.bounds is not None and field is not request_fields.NUM_IMAGES],
                         ids=lambda field: field.name)
def test_openapi_states_each_number_s_rule(field):
    stated = _number_schema(_prompt_schema()["properties"][field.public_name])
    assert stated["type"] == ("integer" if field.kind is int else "number")
    assert stated.get("minimum") == field.bounds.minimum
    assert stated.get("maximum") == field.bounds.maximum
    assert stated.get("exclusiveMinimum", False) == field.bounds.above


def test_openapi_states_the_lengths_and_choices():
    properties = _prompt_schema()["properties"]
    text = request_fields.TEXT
    assert (properties["text"]["minLength"], properties["text"]["maxLength"]) == \
        (text.bounds.minimum, text.bounds.maximum)
    assert properties["model"]["maxLength"] == request_fields.MODEL.bounds.maximum
    assert properties["extend"]["enum"] == [*request_fields.EXTEND_CHOICES, None]
    assert _number_schema(properties["upscale"])["enum"] == [0, *request_fields.UPSCALE_CHOICES]


@pytest.fixture
def fewer_rows(monkeypatch):
    """The table with another keep_rows rule: every side must follow it."""
    changed = dataclasses.replace(request_fields.KEEP_ROWS, bounds=Bounds(1, 9))
    monkeypatch.setattr(request_fields, "KEEP_ROWS", changed)
    monkeypatch.setattr(request_fields, "FIELDS", tuple(changed if field.name == changed.name else field
                                                        for field in request_fields.FIELDS))
    return changed


def test_keep_rows_is_checked_by_its_field_alone(fewer_rows):
    rule = "between 1 and 9"
    with pytest.raises(ValidationError) as refused:
        validate_start({"init_image_data": "AAAA", "keep_rows": "10"}, lambda *_: None, 1000)
    assert (refused.value.field, str(refused.value)) == ("keep_rows", f"keep_rows: must be {rule}, not 10")
    generate = {"job_id": "j", "text": "a fox", "num_images": 2, "seed": 1, "init_codes": [0] * 256}
    with pytest.raises(BadRequest, match=f"^keep_rows must be {rule}$"):
        parse_generate_body({**generate, "keep_rows": 10})
    assert parse_generate_body({**generate, "keep_rows": 9}).keep_rows == 9
    with pytest.raises(ValueError, match=f"^keep_rows must be {rule}$"):
        GenerationRequest("a fox", 2, init_codes=(0,) * 256, keep_rows=10).validate()


def test_a_sampling_value_is_checked_by_its_field_on_every_side():
    body = {"text": "a fox", "num_images": 2, "gen_top_p": "1.5"}
    with pytest.raises(ValidationError, match="^gen_top_p: must be at most 1, not 1.5$"):
        validate_prompt(body)
    with pytest.raises(BadRequest, match="^top_p must be greater than 0 and at most 1$"):
        parse_generate_body({"job_id": "j", "text": "a fox", "num_images": 2, "seed": 1, "top_p": 1.5})
    with pytest.raises(ValueError, match="^top_p must be greater than 0 and at most 1$"):
        GenerationRequest("a fox", 2, top_p=1.5).validate()


def test_a_job_keeps_and_sends_every_field_it_takes():
    job = Job(id="0" * 8, text="a fox", num_images=4, seed=9, top_k=64, top_p=0.9, temperature=1.5,
              condition_scale=3.0, candidates=8, rank=False, model="mega", keep_previews=True,
              init_image="library/a/b.png", init_source="codes", init_codes=pack_codes([0] * 256), keep_rows=5, extend="down", upscale=4)
    hashed = encode_job_fields(job)
    # The submit script stores the model; a start is codes or a picture, here codes.
    # A generation has no upscale fields; this one is no grid sweep.
    assert {field.name for field in taken_by(JOB)} - set(hashed) == {"model", "init_picture", "upscale_of",
                                                                     "upscale_model", "grid"}
    again = Job.from_hash({**hashed, "model": "mega"})
    assert all(getattr(again, field.name) == getattr(job, field.name) for field in taken_by(JOB))
    sent = job.params()
    assert set(sent) == {"job_id", *(field.name for field in taken_by(GENERATE)
                                     if field.name not in ("init_picture", "grid"))}
    assert parse_generate_body(sent).init_codes == (0,) * 256


def test_a_grid_job_keeps_its_grid_and_sends_it_as_an_object():
    params = validate_prompt({"text": "a fox", "grid": {"x": {"field": "top_k", "values": ["5", 9]},
                                                        "y": {"field": "seed", "values": [1, 2]}}})
    assert params["num_images"] == 4 and params["candidates"] is None
    job = Job.from_request("0" * 8, params)
    again = Job.from_hash(encode_job_fields(job))
    sent = again.params()
    assert sent["grid"] == {"x": {"field": "top_k", "values": [5, 9]}, "y": {"field": "seed", "values": [1, 2]}}
    body = parse_generate_body(sent)
    assert (body.num_images, body.grid.cells()[1]) == (4, {"seed": 1, "top_k": 9})
    assert again.to_status()["grid"] == sent["grid"]


def test_an_upscale_job_keeps_its_fields():
    job = Job(id="0" * 8, text="a fox", num_images=1, seed=0, upscale_of="library/a/b.png", upscale_model="demo")
    again = Job.from_hash(encode_job_fields(job))
    assert (again.kind, again.upscale_of, again.upscale_model) == ("upscale", "library/a/b.png", "demo")
    assert Job(id="1", text="a fox", num_images=1, seed=0).kind == "generate"
