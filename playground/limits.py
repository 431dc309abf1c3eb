"""The limits of a generation request, in one place: the frontend's validation, the job
record, the backend's request parsing and the engine all read them from here."""
from __future__ import annotations

import secrets

IMAGE_COUNTS = (2, 4, 6, 8)  # what POST /prompt accepts for num_images, as the original UI offered
MAX_IMAGES = max(IMAGE_COUNTS)  # the most one generation makes (the backend and the engine)
# Best of N: a job may generate up to this many candidates in one batched pass, of which CLIP
# keeps the best num_images (2× or 4× in the UI). The engine's batch is up to this size.
MAX_CANDIDATES = 16
# A grid sweep (grid.py) makes one picture per cell, at most this many, decoded together when
# its backend batches jobs (BACKEND_SLOTS > 1), and at most what that backend batches.
MAX_GRID_CELLS = 16
MAX_SEED = 2**32  # inclusive, as the original README says; 0 asks for a random seed
MAX_TEXT_LENGTH = 1000  # characters in a prompt (and in a library search)
# The published models' image: 16×16 VQGAN codes from a codebook of 16384. The model a backend
# serves reports its own (`image_tokens` and `image_codes` on its /health); these stand in
# until one has.
IMAGE_TOKENS = 256
IMAGE_CODES = 16384
IMAGE_ROWS = 16  # codes per row of that grid, and rows of a square picture (the tiny and demo models' too)
# A continuation keeps 1 … 15 of the 16 rows of codes; a picture extended down again and
# again grows by at least a row each time, up to this many rows.
MAX_KEEP_ROWS = 15
DEFAULT_KEEP_ROWS = 8
MAX_START_ROWS = 64
# POST /upscale takes a library picture up to this many pixels on its longest side: a 256-pixel
# picture and the taller ones extended from it (up to 1024 pixels high) become at most 4096.
MAX_UPSCALE_SIDE = 1024


def public_limits(served_codes: dict[str, int | None], max_upload_bytes: int) -> dict:
    """What the pages need to check a request as the server will (GET /limits): these limits,
    the upload size the frontend takes, and each served model's codebook (the top-k limit;
    IMAGE_CODES until its backend has reported)."""
    return {
        "text_max_chars": MAX_TEXT_LENGTH,
        "image_counts": list(IMAGE_COUNTS),
        "seed_max": MAX_SEED,
        "candidates_max": MAX_CANDIDATES,
        "grid_cells_max": MAX_GRID_CELLS,
        "keep_rows_max": MAX_KEEP_ROWS,
        "keep_rows_default": DEFAULT_KEEP_ROWS,
        "start_rows_max": MAX_START_ROWS,
        "upload_max_bytes": max_upload_bytes,
        "upscale_side_max": MAX_UPSCALE_SIDE,
        "image_tokens": IMAGE_TOKENS,
        "image_rows": IMAGE_ROWS,
        "image_codes": max(filter(None, served_codes.values()), default=IMAGE_CODES),
        "models": {model: {"image_codes": codes or IMAGE_CODES} for model, codes in sorted(served_codes.items())},
    }


def random_seed() -> int:
    """The seed used when a request gives 0: 1 … MAX_SEED."""
    return secrets.randbelow(MAX_SEED) + 1
