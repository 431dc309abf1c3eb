"""A grid sweep through the whole stack (real Redis, backend with two slots, scheduler and
frontend processes; the tiny model): one job, its cells decoded together, each cell the picture
a lone job of its values draws; the library keeps each cell with its own values and a labelled
sheet that is neither continued nor upscaled."""
from __future__ import annotations

import io
import json

import pytest
import requests
from PIL import Image

from playground.grid import SHEET_KEY
from testkit.stack import Stack

pytestmark = pytest.mark.timeout(600)
PROMPT = "a red cube on a blue sphere"
GRID = {"x": {"field": "temperature", "values": [0.5, 1.5]}, "y": {"field": "top_k", "values": [5, 50, 500]}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_cache_dir):
    with Stack(tmp_path_factory.mktemp("stack-grid"), model_cache_dir, warm_up_batch_sizes="2",
               backend_env={"BACKEND_SLOTS": "2"}) as stack:
        yield stack


def png(stack: Stack, path: str) -> Image.Image:
    picture = Image.open(io.BytesIO(requests.get(f"{stack.frontend.url}/{path}", timeout=10).content))
    picture.load()
    return picture


def test_a_grid_is_one_job_of_cells_that_lone_jobs_draw_alike(stack):
    health = requests.get(stack.backend.url + "/health", timeout=10).json()
    assert health["slots"] == 2 and health["grid_cells_max"] == 16
    done = stack.run_prompt({"text": PROMPT, "seed": 77, "grid": GRID}, timeout=300)
    assert done["num_images"] == 6 and done["grid"]["y"]["values"] == [5, 50, 500]
    entry = done["result"]
    cells = [{"top_k": top_k, "temperature": temperature, "seed": 77} for top_k in (5, 50, 500)
             for temperature in (0.5, 1.5)]
    assert entry["cells"] == cells and entry["grid"] == done["grid"]
    for path, cell, codes in zip(entry["generated_images"], cells, done["codes"]):
        text = png(stack, path).text
        assert (text["gen_top_k"], text["temperature"], text["seed"]) == (str(cell["top_k"]),
                                                                           str(cell["temperature"]), "77")
        # A lone job of the cell's values: its image 0 is the cell.
        alone = stack.run_prompt({"text": PROMPT, "num_images": 2, "seed": 77, "gen_top_k": cell["top_k"],
                                  "temperature": cell["temperature"]}, timeout=300)
        assert alone["codes"][0] == codes
    sheet = png(stack, entry["sheet_image"])
    side = png(stack, entry["generated_images"][0]).size[0]
    assert json.loads(sheet.text[SHEET_KEY]) == done["grid"]
    assert sheet.size[0] > 2 * side and sheet.size[1] > 3 * side  # the cells and their labels
    # The sheet is no picture: neither continued nor upscaled; deleting it keeps the cells.
    refused = requests.post(stack.frontend.url + "/prompt", json={"text": PROMPT, "num_images": 2,
                                                                  "init_image": entry["sheet_image"]}, timeout=30)
    assert refused.status_code == 400 and refused.json()["field"] == "init_image", refused.text
    refused = requests.post(stack.frontend.url + "/upscale", json={"path": entry["sheet_image"]}, timeout=30)
    assert refused.status_code == 400 and refused.json()["field"] == "path", refused.text
    assert requests.post(stack.frontend.url + "/deleteimage", json={"path": entry["sheet_image"]},
                         timeout=30).status_code == 200
    listed = next(e for e in requests.get(stack.frontend.url + "/getlibrary", timeout=10).json()
                  if e["queue_id"] == done["queue_id"])
    assert listed["generated_images"] == entry["generated_images"] and listed.get("sheet_image") is None
    # Nothing went wrong on the way, not even a preview (the cells' codes so far once differed in length).
    assert "Traceback" not in stack.backend.log_tail(10**7), stack.backend.log_tail()


def test_an_oversized_grid_gets_a_400_naming_grid(stack):
    response = requests.post(stack.frontend.url + "/prompt", json={
        "text": PROMPT, "grid": {"x": {"field": "seed", "values": list(range(1, 6))},
                                 "y": {"field": "temperature", "values": [0.5, 1, 1.5, 2]}}}, timeout=30)
    assert response.status_code == 400 and response.json()["field"] == "grid", response.text
