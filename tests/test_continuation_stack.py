"""Continuations through the whole stack (real Redis, backend, scheduler and frontend
processes; tiny and demo models): continuing image i of a job from the library with its
prompt, values and seed gives image i again, codes and pixels; extend makes a taller picture
that can be extended again; an uploaded picture is encoded, a PNG of ours gives its codes."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import requests
from PIL import Image

from playground import pictures
from testkit.stack import Stack
from training import shapes_dataset
from training.patch_codes import PatchCodebook

pytestmark = pytest.mark.timeout(600)
VALUES = {"text": "a yellow triangle above a blue circle", "num_images": 2, "seed": 4242,
          "gen_top_k": 64, "temperature": 1.2}


@pytest.fixture(scope="module", params=["tiny", "demo"])
def stack(request, tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp(f"stack-{request.param}"), model_cache_dir, model=request.param,
               warm_up_batch_sizes="2") as stack:
        yield stack


def run(stack: Stack, **body) -> dict:
    return stack.run_prompt(body, timeout=120)


def png(stack: Stack, path: str) -> Image.Image:
    return Image.open(io.BytesIO(requests.get(f"{stack.frontend.url}/{path}", timeout=10).content))


@pytest.fixture(scope="module")
def fresh(stack):
    return run(stack, **VALUES)


@pytest.mark.parametrize("keep_rows", [1, 8, 15])
def test_continuing_a_library_image_draws_it_again(stack, fresh, keep_rows):
    for i, path in enumerate(fresh["images"]):
        again = run(stack, **VALUES, init_image=path, keep_rows=keep_rows)
        assert again["codes"][i] == fresh["codes"][i]
        assert png(stack, again["images"][i]).tobytes() == png(stack, path).tobytes()
        entry = again["result"]
        assert (entry["init_image"], entry["keep_rows"], entry["extend"], entry["init_source"]) == (
            path, keep_rows, None, "codes")
        # The other image keeps image i's rows and draws its own below them.
        other = pictures.unpack_codes(again["codes"][1 - i])
        kept = keep_rows * pictures.ROW
        assert other[:kept] == pictures.unpack_codes(fresh["codes"][i])[:kept]
    listed = requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()
    assert any(e.get("init_image") == fresh["images"][0] and e.get("keep_rows") == keep_rows for e in listed)


def test_extend_down_makes_a_taller_picture_that_extends_again(stack, fresh):
    source = fresh["images"][0]
    source_codes = pictures.unpack_codes(fresh["codes"][0])
    once = run(stack, **VALUES, init_image=source, keep_rows=8, extend="down")["result"]
    assert once["extend"] == "down" and len(once["extended_images"]) == 2
    top = png(stack, source)
    width, height = top.size
    for tall_path, tile_path in zip(once["extended_images"], once["generated_images"]):
        tall, tile = png(stack, tall_path), png(stack, tile_path)
        assert tall.size == (width, height * 3 // 2)
        assert tall.crop((0, 0, width, height)).tobytes() == top.tobytes()
        assert tall.crop((0, height, width, tall.height)).tobytes() == tile.crop((0, height // 2, width, height)).tobytes()
        codes = pictures.unpack_codes(tall.text[pictures.CODES_KEY])
        tile_codes = pictures.unpack_codes(tile.text[pictures.CODES_KEY])
        assert codes == source_codes + tile_codes[128:]
        assert tile_codes[:128] == source_codes[128:]  # the source's bottom rows are the tile's top
        assert f"Size: {width}x{height * 3 // 2}, " in tall.text["parameters"]
    twice = run(stack, **VALUES, init_image=once["extended_images"][0], keep_rows=4, extend="down")["result"]
    taller = png(stack, twice["extended_images"][0])
    assert taller.size == (width, height * 3 // 2 + height * 12 // 16)
    assert taller.crop((0, 0, width, height * 3 // 2)).tobytes() == png(stack, once["extended_images"][0]).tobytes()


def test_a_png_of_ours_uploaded_gives_its_codes(stack, fresh):
    data = requests.get(f"{stack.frontend.url}/{fresh['images'][1]}", timeout=10).content
    again = run(stack, **VALUES, init_image_data=base64.b64encode(data).decode(), keep_rows=8)
    assert again["result"]["init_source"] == "codes" and again["result"]["init_image"] is None
    assert again["codes"][1] == fresh["codes"][1]


def test_an_uploaded_picture_is_encoded(stack):
    scene = shapes_dataset.Scene("black", (shapes_dataset.Item("red", "square", "large", (64, 64)),))
    picture = shapes_dataset.render(scene).resize((384, 384), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95)
    upload = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    done = run(stack, **VALUES, init_image_data=upload, keep_rows=8)
    assert done["result"]["init_source"] == "encoded"
    first = [pictures.unpack_codes(c)[:128] for c in done["codes"]]
    assert first[0] == first[1]
    if stack.backend.env["DALLE_MODEL"] == "demo":  # only the demo model's encoder was trained
        expected = PatchCodebook.enumerate().encode(scene)[:128]
        assert np.mean(np.array(first[0]) == expected) >= 0.99


def test_a_source_deleted_before_its_extension_runs_leaves_the_tiles_alone(stack):
    source = run(stack, **VALUES)["images"][0]
    # A job ahead keeps the worker busy while the source picture is deleted.
    ahead = requests.post(stack.frontend.url + "/prompt", json={**VALUES, "num_images": 8}, timeout=10).json()
    extension = requests.post(stack.frontend.url + "/prompt", timeout=10,
                              json={**VALUES, "init_image": source, "keep_rows": 8, "extend": "down"}).json()
    assert requests.delete(f"{stack.frontend.url}/{source}", timeout=10).status_code == 200
    assert requests.get(f"{stack.frontend.url}/jobs/{ahead['queue_id']}", timeout=10).json()["status"] != "done"
    deadline = time.monotonic() + 120
    while (status := requests.get(f"{stack.frontend.url}/jobs/{extension['queue_id']}", timeout=10).json())[
            "status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status["status"] == "done" and len(status["images"]) == 2
    assert "extended_images" not in status["result"]
