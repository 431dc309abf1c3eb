"""The engine: prompt → image tokens → images, batched, reproducible, cancellable.

One request is one batched pass: B images give rows [B, 2] (conditional, unconditional).
On a CPU each batch size has its own programs; on an accelerator, where a decoding step costs
the same for one image as for eight (it is bound by reading the weights), every request up to
8 images per device runs in the 8-image program, so one program is compiled instead of four.
The encoder runs once on the two distinct rows (the prompt and the empty prompt), and the
cross-attention keys/values of those two rows are computed once and shared by all images.
The 256 decoding steps run as jitted chunks of `CHUNK_STEPS` steps (a loop whose trip count
XLA knows: one with run-time bounds waits for the host at every step on a GPU) from a host
loop that reports progress and checks for cancellation between chunks, with one chunk always
queued ahead so the device never waits for the host.

Sampling values (top_k, top_p, temperature, condition_scale) are run-time arrays, so
changing them never recompiles; each batch size is compiled once (`warm_up`, ahead of
time). Image i uses the key `fold_in(key(seed), i)` and, at step t, `fold_in(that, t)`:
it depends only on (prompt, parameters, seed, i), not on the batch size or device count.
With several local devices the batch axis is sharded over all of them.

A continuation keeps the first rows of given codes: one batched causal pass (`prefill`, the
same program for any number of kept rows) fills the self-attention cache of the kept
positions, and the chunks start at the first position after them. As the random keys depend
on the position only, continuing image i of a job with its prompt, values and seed draws
exactly the codes that job drew.

Previews: each chunk also hands back a copy of the codes drawn so far (the state itself is
donated to the next chunk), so between chunks the host can give the first K codes to an
`on_preview` callback, as often as `preview.PreviewSchedule` allows; `preview_pictures`
draws them (preview.py: a VQGAN decode on an accelerator, a colour table on a CPU).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from playground import pictures, request_fields
from playground.limits import MAX_CANDIDATES, random_seed
from playground.protocol import Stage

from . import checkpoint, dallebart, preview
from .dallebart import DalleBartConfig
from .models import resolve_model
from .progress import LoadProgress
from .request import GenerationCancelled, GenerationRequest

log = logging.getLogger(__name__)

CHUNK_STEPS = 8
# On a CPU a step is bound by reading the weights and the self-attention cache; with the cache
# in blocks (of 64 positions) a chunk reads only the blocks filled so far: five eighths of it on
# average. Worth its extra chunk programs where the cache is large (mini: 403 MB for 8 images;
# the demo model: 13 MB); an accelerator reads it fast enough to keep one block and one program.
CPU_CACHE_BLOCKS = 4
CPU_BLOCKS_FROM_BYTES = 64 * 2**20  # the cache of ACCELERATOR_BATCH images
ACCELERATOR_BATCH = 8  # images per device that share one program on a GPU or TPU
# Partial sorts for top-k by the size of k: lax.top_k costs about as much as its k (for 8
# images on a CPU: 0.27 ms for 64 best of 16,384 scores per row, 2.8 ms for 1024).
TOP_K_TIERS = (64, 1024)
COMPILATION_CACHE_SUBFOLDER = "jax-compilation-cache"
PREVIEW_COLOURS_SUBFOLDER = "preview-colours"


def _round_up(count: int, multiple: int) -> int:
    return -(-count // multiple) * multiple


@dataclasses.dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    params: dict[str, float | int]
    timings: dict[str, float]
    codes: np.ndarray  # int32 [num_images, 256] image tokens (VQGAN codes)


def seed_key(seed: int) -> np.ndarray:
    """Raw PRNG key from the seed's two 32-bit words: equals jax.random.PRNGKey(seed) below 2**32."""
    return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)


# ---------------------------------------------------------------- the jitted pieces


def _sample(logits, keys, sampling, num_codes):
    """Super-conditioning, temperature, top-k, top-p, then one draw per row.

    logits [B, 2, V] (conditional, unconditional), keys [B, 2] raw per-row keys. The sampling
    values are run-time scalars, or arrays [B] (a batch of several jobs): one per row. When k
    is at most the largest of TOP_K_TIERS (the usual case) only the best scores of the
    smallest tier that holds every row's k are ranked (a partial sort, ~100x cheaper on a CPU
    than sorting 16k scores per row and step); a larger k takes the full sort. Every tier
    draws among the same array (its ranks padded with -inf to the largest tier): the same
    random numbers, so the same code whichever tier ranks it; and in a batch where some row
    needs the full sort, the others still draw as the largest tier does.
    """
    per_row = lambda name: jnp.reshape(sampling[name], (-1, 1))  # noqa: E731 - [B or 1, 1], broadcast on rows
    cond, uncond = logits[:, 0], logits[:, 1]
    scores = uncond + per_row("condition_scale") * (cond - uncond)
    valid = jnp.arange(scores.shape[-1]) < num_codes  # only VQGAN codes; never start/pad/padding ids
    scores = jnp.where(valid, scores / per_row("temperature"), -jnp.inf)
    k = jnp.clip(per_row("top_k"), 1, num_codes)
    top_p = per_row("top_p")
    tiers = sorted({min(tier, num_codes) for tier in TOP_K_TIERS})
    draw = jax.vmap(jax.random.categorical)

    def among_best(candidates):
        def pick(scores):
            ranked, indices = jax.lax.top_k(scores, candidates)
            padding = ((0, 0), (0, tiers[-1] - candidates))
            ranked = jnp.pad(ranked, padding, constant_values=-jnp.inf)
            kept = _nucleus(ranked, k, top_p)
            choice = draw(keys, jnp.where(kept, ranked, -jnp.inf))
            return jnp.take_along_axis(jnp.pad(indices, padding), choice[:, None], axis=1)[:, 0]
        return pick

    def among_all(scores):
        ranked = -jnp.sort(-scores, axis=-1)
        kept = _nucleus(ranked, k, top_p)
        threshold = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
        everything = draw(keys, jnp.where(scores >= threshold, scores, -jnp.inf))
        return jnp.where(k[:, 0] > tiers[-1], everything, among_best(tiers[-1])(scores))

    tier = jnp.max(sum((k > candidates).astype(jnp.int32) for candidates in tiers))
    branches = [among_best(candidates) for candidates in tiers] + [among_all]
    return jax.lax.switch(tier, branches, scores).astype(jnp.int32)


def _nucleus(ranked, k, top_p):
    """Which of the descending scores `ranked` [B, N] survive top-k, then top-p on what is left."""
    rank = jnp.arange(ranked.shape[-1])  # k and top_p: [B or 1, 1]
    in_top_k = rank < k
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    return in_top_k & ((mass_before < top_p) | (rank == 0))


class DecodingState(NamedTuple):
    """What the token loop carries from step to step (a pytree; the batch axis comes first)."""
    cache: list  # per decoder layer, per block of positions, self-attention (keys, values) [2B, H, T/blocks, hd]
    tokens: jax.Array  # [B] int32: the code each image drew last (the start token at first)
    codes: jax.Array  # [B, T] int32: the codes drawn so far
    keys: jax.Array  # [B, 2] uint32: each image's random key

    @staticmethod
    def shardings(batch_sharding: Callable[[int], NamedSharding], decoder_layers: int,
                  cache_blocks: int) -> DecodingState:
        """Where each part lives: every array split along its batch axis over the devices."""
        cache = [((batch_sharding(4), batch_sharding(4)),) * cache_blocks] * decoder_layers
        return DecodingState(cache, batch_sharding(1), batch_sharding(2), batch_sharding(2))


class JobStart(NamedTuple):
    """A job ready to decode (`Engine.start_job`)."""
    cross_kv: list  # per decoder layer, the (keys, values) of its two encoder rows [2, H, S, hd]
    encoder_mask: jax.Array  # [2, S]
    state: DecodingState  # its rows, image i in row i
    first: int  # the first position to decode


@dataclasses.dataclass
class _Programs:
    """The compiled executables for one padded batch size."""
    prepare: Callable
    chunks: dict[tuple[int, int, int], Callable]  # by (steps per call, first and last cache block of the call)
    prepared: tuple  # the shapes and shardings of prepare's output, to compile more chunks
    prefill: Callable | None = None  # compiled at the first continuation of this batch size


class Engine:
    """A loaded model; `generate` is thread-safe (one generation at a time)."""

    def __init__(self, model_name: str, config: DalleBartConfig, params, vqgan_config, vqgan_params,
                 tokenizer, normalizer=None, devices=None, chunk_steps: int = CHUNK_STEPS,
                 vqgan_batch: int | None = None, batch_per_device: int | None = None,
                 vqgan_file: Path | None = None, cache_blocks: int | None = None,
                 colours_dir: Path | None = None):
        if config.image_length % chunk_steps:
            raise ValueError("chunk_steps must divide image_length")
        self.model_name = model_name
        self.config = config
        self.vqgan_config = vqgan_config
        self.num_codes = min(config.image_vocab_size, vqgan_config.n_embed)
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.chunk_steps = chunk_steps
        self.devices = list(devices or jax.local_devices())
        self._mesh = Mesh(np.array(self.devices), ("batch",))
        self._replicated = NamedSharding(self._mesh, PartitionSpec())
        # Weights go to every device in their own dtype: no float32 copy of a half model.
        self.params = jax.device_put(dallebart.unstack_layers(params), self._replicated)
        self.vqgan_params = jax.device_put(vqgan_params, self._replicated)
        self.cache_dtype = jax.tree_util.tree_leaves(params)[0].dtype
        self._programs: dict[int, _Programs] = {}
        self.on_accelerator = self.devices[0].platform != "cpu"
        self.cache_blocks = cache_blocks or self._default_cache_blocks()
        if config.image_length % self.cache_blocks:
            raise ValueError("cache_blocks must divide image_length")
        # Rows are padded to a multiple of this: one program per size on a CPU, where time
        # grows with the rows; ACCELERATOR_BATCH per device elsewhere (see the module's doc).
        self.batch_multiple = len(self.devices) * (batch_per_device or (ACCELERATOR_BATCH if self.on_accelerator else 1))
        # On a CPU the VQGAN runs fastest two images at a time (larger batches leave the
        # caches); an accelerator takes four per device, always four (one program).
        self.vqgan_batch = vqgan_batch or len(self.devices) * (4 if self.on_accelerator else 2)
        self._vqgan: dict[int, Callable] = {}
        # The VQGAN checkpoint holds the encoder too; read only when a picture is first encoded.
        self._vqgan_file = vqgan_file
        self._vqgan_encoder: tuple[dict, Callable] | None = None
        self._lock = threading.Lock()
        # Previews: None picks the spacing by their cost (preview.py), 0 turns them off, N
        # hands out the codes every N tokens (rounded up to whole chunks).
        self.preview_every: int | None = None
        # A VQGAN pass per preview is cheap on an accelerator only; a CPU looks colours up.
        self.preview_method = "decode" if self.on_accelerator else "table"
        self.colours = preview.ColourTable(np.asarray(vqgan_params["quantize"]["embedding"]["embedding"]))
        self._colour_table_ready = False
        self._colours_dir = colours_dir  # where the warm-up's colours are kept between starts
        self.uncond_tokens = tokenizer.encode([""], max_length=config.max_text_length)
        self.clip = None  # the CLIP model that ranks Best of N candidates (`rank_with`); None: no ranking

    def _default_cache_blocks(self) -> int:
        config = self.config
        cache_bytes = dallebart.cache_bytes(config, ACCELERATOR_BATCH, self.cache_dtype.itemsize)
        large = cache_bytes >= CPU_BLOCKS_FROM_BYTES and config.image_length % CPU_CACHE_BLOCKS == 0
        return CPU_CACHE_BLOCKS if large and not self.on_accelerator else 1

    # -- shapes and shardings

    @property
    def total_tokens(self) -> int:
        return self.config.image_length

    @property
    def row_length(self) -> int:
        """Codes per row of the square code grid (16 for 256 codes)."""
        return math.isqrt(self.config.image_length)

    @property
    def max_keep_rows(self) -> int:
        return self.total_tokens // self.row_length - 1

    def padded_batch(self, num_images: int) -> int:
        """Images actually computed (extra ones are discarded): a multiple of `batch_multiple`.
        Image i never depends on the padding (its random keys depend only on i)."""
        return _round_up(num_images, self.batch_multiple)

    def _batch_sharding(self, ndim: int, axis: int = 0) -> NamedSharding:
        spec = [None] * ndim
        spec[axis] = "batch"
        return NamedSharding(self._mesh, PartitionSpec(*spec))

    def _state_shardings(self) -> DecodingState:
        return DecodingState.shardings(self._batch_sharding, self.config.decoder_layers, self.cache_blocks)

    def _chunk_blocks(self, start: int, steps: int) -> tuple[int, int]:
        """The first and last cache block that positions start … start+steps-1 write to."""
        size = self.total_tokens // self.cache_blocks
        return start // size, (start + steps - 1) // size

    # -- programs

    def _prepare_fn(self, params, input_ids, attention_mask, key, batch_rows):
        config = self.config
        encoder_states = dallebart.encode(params, config, input_ids, attention_mask)
        cross_kv = dallebart.cross_attention_kv(params, config, encoder_states)
        image_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch_rows)
        batch = batch_rows.shape[0]
        state = DecodingState(
            cache=dallebart.empty_cache(config, batch, self.cache_dtype, self.cache_blocks),
            tokens=jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
            codes=jnp.zeros((batch, config.image_length), jnp.int32),
            keys=image_keys,
        )
        return cross_kv, state

    def _chunk_fn(self, params, cross_kv, encoder_mask, state, start, sampling, *, steps: int,
                  blocks: tuple[int, int]):
        """`steps` steps from position `start`, all writing to cache blocks blocks[0] … blocks[1]:
        only the blocks up to the last are read."""
        config = self.config
        shardings = self._state_shardings()
        first_written, last = blocks

        def step(position, state: DecodingState) -> DecodingState:
            both_rows = jnp.broadcast_to(state.tokens[:, None], (state.tokens.shape[0], 2))
            read = [layer[:last + 1] for layer in state.cache]
            logits, written = dallebart.decode_step(params, config, both_rows, position, read, cross_kv,
                                                    encoder_mask, first_written)
            cache = [new + layer[last + 1:] for new, layer in zip(written, state.cache)]
            step_keys = jax.vmap(jax.random.fold_in, (0, None))(state.keys, position)
            drawn = _sample(logits, step_keys, sampling, self.num_codes)
            codes = jax.lax.dynamic_update_slice(state.codes, drawn[:, None], (0, position))
            new = state._replace(cache=cache, tokens=drawn, codes=codes)
            return jax.lax.with_sharding_constraint(new, shardings)

        # A trip count known when compiling: with run-time bounds a GPU waits for the host at
        # every step (Mega on an H100: 0.67 s against 0.59 s for 256 steps at 8 images).
        state = jax.lax.fori_loop(0, steps, lambda i, state: step(start + i, state), state)
        # A small separate output the host can wait on (and read the codes so far from, for
        # previews) while the state is donated onward.
        return state, state.codes + 0

    def _prefill_fn(self, params, cross_kv, encoder_mask, state, init_codes, kept):
        """Continue from init_codes [B, T]: cache the positions before `kept` (a run-time
        count, so one program serves every number of rows) and carry the code drawn last."""
        config = self.config
        # Inputs of positions 0 … T-L-1: enough for every allowed prefix (at most T-L kept).
        length = config.image_length - self.row_length
        start = jnp.full((init_codes.shape[0], 1), config.decoder_start_token_id, jnp.int32)
        tokens = jnp.concatenate([start, init_codes[:, :length - 1]], axis=1)
        cache = dallebart.prefill_cache(params, config, tokens, state.cache, cross_kv, encoder_mask)
        last = jax.lax.dynamic_index_in_dim(init_codes, kept - 1, axis=1, keepdims=False)
        new = state._replace(cache=cache, tokens=last, codes=init_codes)
        return jax.lax.with_sharding_constraint(new, self._state_shardings())

    def _compile_prefill(self, programs: _Programs) -> Callable:
        if programs.prefill is None:
            (cross_kv, state), text = programs.prepared
            codes = jax.ShapeDtypeStruct(state.codes.shape, jnp.int32, sharding=self._batch_sharding(2))
            kept = jax.ShapeDtypeStruct((), jnp.int32, sharding=self._replicated)
            prefill = jax.jit(self._prefill_fn, donate_argnames="state", out_shardings=self._state_shardings())
            programs.prefill = prefill.lower(self.params, cross_kv, text, state, codes, kept).compile()
        return programs.prefill

    def _vqgan_fn(self, vqgan_params, codes):
        from .vqgan import decode_codes

        return decode_codes(vqgan_params, self.vqgan_config, codes)

    def _compile_prepare(self, batch: int) -> _Programs:
        config = self.config
        text = jax.ShapeDtypeStruct((2, config.max_text_length), jnp.int32, sharding=self._replicated)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=self._replicated)
        rows = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=self._batch_sharding(1))
        prepare = jax.jit(self._prepare_fn, out_shardings=(self._replicated, self._state_shardings()))
        prepare = prepare.lower(self.params, text, text, key, rows).compile()
        return _Programs(prepare, {}, (prepare.out_info, text))

    def _compile_chunk(self, programs: _Programs, start: int, steps: int) -> Callable:
        """The program for the chunk of `steps` steps from `start` (shared by every chunk of
        that length that writes to the same cache blocks)."""
        blocks = self._chunk_blocks(start, steps)
        if (steps, *blocks) not in programs.chunks:
            (cross_kv, state), text = programs.prepared
            scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=self._replicated)
            sampling = {"top_k": scalar(jnp.int32), "top_p": scalar(jnp.float32),
                        "temperature": scalar(jnp.float32), "condition_scale": scalar(jnp.float32)}
            chunk = jax.jit(functools.partial(self._chunk_fn, steps=steps, blocks=blocks), donate_argnames="state",
                            out_shardings=(self._state_shardings(), self._batch_sharding(2)))
            programs.chunks[(steps, *blocks)] = chunk.lower(self.params, cross_kv, text, state, scalar(jnp.int32),
                                                            sampling).compile()
        return programs.chunks[(steps, *blocks)]

    def _vqgan_pieces(self, num_images: int) -> list[int]:
        """Images per VQGAN call: `vqgan_batch` at a time, the rest in one smaller call on a CPU
        (padded to `vqgan_batch` on an accelerator, which then needs one program)."""
        full, rest = divmod(num_images, self.vqgan_batch)
        last = self.vqgan_batch if self.on_accelerator else _round_up(rest, len(self.devices))
        return [self.vqgan_batch] * full + ([last] if rest else [])

    def _vqgan_program(self, rows: int) -> Callable:
        """The VQGAN decoder for `rows` images, compiled once for all requests."""
        if rows not in self._vqgan:
            codes = jax.ShapeDtypeStruct((rows, self.config.image_length), jnp.int32,
                                         sharding=self._batch_sharding(2))
            self._vqgan[rows] = jax.jit(self._vqgan_fn).lower(self.vqgan_params, codes).compile()
        return self._vqgan[rows]

    def decode_images(self, codes: np.ndarray) -> np.ndarray:
        """VQGAN codes [N, 256] → float pixels [N, H, W, 3] in [0, 1] (256×256 for the published VQGAN)."""
        pieces, start = [], 0
        for rows in self._vqgan_pieces(len(codes)):
            piece = codes[start:start + rows]
            start += len(piece)
            padded = np.concatenate([piece, np.repeat(piece[-1:], rows - len(piece), axis=0)])
            pixels = self._vqgan_program(rows)(self.vqgan_params, jax.device_put(padded, self._batch_sharding(2)))
            pieces.append(np.asarray(pixels)[:len(piece)])
        return np.concatenate(pieces)

    def encode_picture(self, picture: Image.Image) -> np.ndarray:
        """A picture → its VQGAN codes int32 [T]: centre-cropped to a square, resized to the
        VQGAN's resolution, encoded (the encoder's weights are read at the first call)."""
        pixels = np.asarray(pictures.square(picture, self.vqgan_config.resolution), np.float32) / 255.0
        with self._lock:
            params, encode = self._encoder()
            codes = encode(params, jax.device_put(pixels[None], self._replicated))
        return np.asarray(codes)[0]

    def _encoder(self) -> tuple[dict, Callable]:
        if self._vqgan_encoder is None:
            from .vqgan import encode_images, init_vqgan_params

            if self._vqgan_file is None:
                raise ValueError("this engine has no VQGAN checkpoint to read the encoder from")
            shapes = jax.eval_shape(lambda: init_vqgan_params(self.vqgan_config, jax.random.PRNGKey(0)))
            params = checkpoint.read_checkpoint(
                self._vqgan_file, checkpoint.tree_shapes(shapes), checkpoint.cast_floats_to(np.float32),
                keep=lambda path: not _vqgan_decoder_only(path) or path.startswith("quantize/"))
            config = self.vqgan_config
            self._vqgan_encoder = (jax.device_put(params, self._replicated),
                                   jax.jit(lambda params, pixels: encode_images(params, config, pixels)))
        return self._vqgan_encoder

    def programs(self, num_images: int) -> _Programs:
        """The compiled programs for this batch size (compiled now if warm_up did not)."""
        batch = self.padded_batch(num_images)
        if batch not in self._programs or not self._programs[batch].chunks:
            started = time.monotonic()
            programs = self.preparation(num_images)
            for start in range(0, self.total_tokens, self.chunk_steps):
                self._compile_chunk(programs, start, self.chunk_steps)
            log.info("compiled batch %d in %.1f s", batch, time.monotonic() - started)
        return self._programs[batch]

    def preparation(self, num_images: int) -> _Programs:
        """The programs that start a job of this batch size (its chunks compiled only by
        `programs`): a batch of several jobs starts each with these, then decodes it in its own."""
        batch = self.padded_batch(num_images)
        if batch not in self._programs:
            self._programs[batch] = self._compile_prepare(batch)
        return self._programs[batch]

    def chunk_program(self, num_images: int, start: int, steps: int | None = None) -> Callable:
        """The compiled chunk that decodes positions start … start+steps-1 (CHUNK_STEPS by default)."""
        return self._compile_chunk(self.programs(num_images), start, steps or self.chunk_steps)

    @property
    def compiled_batches(self) -> list[int]:
        return sorted(self._programs)

    def warm_up(self, batch_sizes=(2, 4, 6, 8)) -> None:
        with self._lock:
            for size in batch_sizes:
                programs = self.programs(size)
                if self.on_accelerator:  # one batch size there: the first continuation waits for no compile
                    self._compile_prefill(programs)
                for rows in self._vqgan_pieces(size):
                    self._vqgan_program(rows)
            if self.preview_every != 0 and self.preview_method == "table":
                self.prepare_colour_table()

    def rank_with(self, clip) -> None:
        """Rank Best of N candidates with `clip` (clip.load_clip's model; None: no ranking). On
        an accelerator every candidate count shares one program of MAX_CANDIDATES rows (9 … 16
        images): compiled now, so the first ranked job does not wait for it."""
        self.clip = clip
        if clip is not None and self.on_accelerator:
            self.warm_up((MAX_CANDIDATES,))

    # -- previews

    def prepare_colour_table(self) -> None:
        """The previews' colours (preview.ColourTable): every code decoded on its own for a
        small codebook, a few random grids for a large one (finished jobs teach it the rest).
        Kept in the model cache, so a restart reads them instead of decoding again."""
        if self._colour_table_ready:
            return
        started = time.perf_counter()
        kept = self._colours_file()
        if kept is not None and self.colours.load(kept):
            log.info("preview colours read from the cache in %.1f s", time.perf_counter() - started)
            self._colour_table_ready = True
            return
        if self.num_codes <= preview.EXACT_TABLE_CODES:
            decode = jax.jit(self._vqgan_grid_fn, static_argnums=2)
            self.colours.learn_exact(lambda codes, side: decode(self.vqgan_params, codes, side))
        else:
            rng = np.random.default_rng(0)
            codes = rng.integers(0, self.num_codes, (preview.SEED_GRIDS, self.total_tokens), dtype=np.int32)
            self.colours.learn(codes, self.decode_images(codes))
        self._colour_table_ready = True
        log.info("preview colours ready in %.1f s", time.perf_counter() - started)
        if kept is not None:
            try:
                self.colours.save(kept)
            except OSError as error:  # a read-only cache: the next start decodes them again
                log.warning("could not keep the preview colours in %s: %s", kept, error)

    def _colours_file(self) -> Path | None:
        """The file of this VQGAN's warm-up colours: named by a digest of its decoder's weights
        and of how the table is seeded, so that no other weights ever read it."""
        if self._colours_dir is None:
            return None
        digest = hashlib.sha256(f"{self.num_codes} {self.total_tokens} {preview.EXACT_TABLE_CODES} "
                                f"{preview.EXACT_GRID_SIDE} {preview.SEED_GRIDS}".encode())
        leaves = jax.tree_util.tree_flatten_with_path(self.vqgan_params)[0]
        for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
            array = np.ascontiguousarray(leaf)
            digest.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
            digest.update(array.reshape(-1).view(np.uint8))
        return Path(self._colours_dir) / f"{digest.hexdigest()[:32]}.npz"

    def _vqgan_grid_fn(self, vqgan_params, codes, side):
        from .vqgan import decode_codes

        return decode_codes(vqgan_params, self.vqgan_config, codes, side)

    def preview_pictures(self, codes: np.ndarray) -> np.ndarray:
        """uint8 [B, PREVIEW_SIZE, PREVIEW_SIZE, 3] from each image's first K codes [B, K],
        the cells not drawn yet grey. Called from an `on_preview` callback (the engine's lock
        is held then), or under the caller's own care."""
        codes = np.asarray(codes, np.int32)
        done = codes.shape[1]
        if self.preview_method == "table":
            return preview.table_previews(self.colours.table(), codes, self.row_length)
        grid = np.zeros((len(codes), self.total_tokens), np.int32)
        grid[:, :done] = codes
        return preview.decoded_previews(self.decode_images(grid), done, self.row_length)

    # -- generation

    def encode_text(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """[2, S] token ids and mask: the (normalised) prompt, then the empty prompt."""
        if self.normalizer is not None and self.config.normalize_text:
            text = self.normalizer.normalize(text)
        ids, mask = self.tokenizer.encode([text], max_length=self.config.max_text_length)
        return (np.concatenate([ids, self.uncond_tokens[0]]).astype(np.int32),
                np.concatenate([mask, self.uncond_tokens[1]]).astype(np.int32))

    def generate_codes(self, request: GenerationRequest, on_progress=None, cancel=None,
                       steps_per_chunk: int | None = None, on_preview=None) -> tuple[np.ndarray, int, dict]:
        """Image tokens only: codes int32 [num_images, 256], the seed used, the sampling values.

        `steps_per_chunk` overrides the chunk length (the benchmark compares one 256-step call;
        the first call with a new length compiles it). `on_preview(K, codes [num_images, K])`
        hears the first K codes of each image now and then (see `generate`).
        """
        request.validate()
        with self._lock:
            codes, seed, sampling, _ = self._generate_codes(request, on_progress, cancel, steps_per_chunk,
                                                            on_preview)
        return np.asarray(codes)[:request.num_images], seed, sampling

    def check_continuation(self, request: GenerationRequest) -> None:
        """ValueError unless the request's start fits this model (its code count and codebook)."""
        if request.init_codes is None:
            return
        request_fields.KEEP_ROWS.check(request.keep_rows, request_fields.Bounds(1, self.max_keep_rows))
        if len(request.init_codes) != self.total_tokens:
            raise ValueError(f"init_codes must be {self.total_tokens} codes")
        if max(request.init_codes) >= self.num_codes:
            raise ValueError(f"init_codes must be below {self.num_codes}, the model's codebook")

    def first_position(self, request: GenerationRequest) -> int:
        """Where a request's decoding starts: after a continuation's kept rows, else at 0."""
        return 0 if request.init_codes is None else request.keep_rows * self.row_length

    def start_job(self, request: GenerationRequest, programs: _Programs, seed: int, timings: dict) -> JobStart:
        """A request's prompt encoded and its rows' decoding state made, in the batch size of
        `programs`: image i in row i, a continuation's kept positions cached (its time in
        `timings`). The single-job path decodes this state; a batch of jobs copies it in."""
        self.check_continuation(request)
        first = self.first_position(request)
        batch = programs.prepared[0][1].codes.shape[0]
        input_ids, attention_mask = self.encode_text(request.text)
        put = lambda value: jax.device_put(value, self._replicated)  # noqa: E731
        cross_kv, state = programs.prepare(
            self.params, put(input_ids), put(attention_mask), put(seed_key(seed)),
            jax.device_put(np.arange(batch, dtype=np.int32), self._batch_sharding(1)))
        encoder_mask = put(attention_mask)
        if first:
            prefill = self._compile_prefill(programs)
            started = time.perf_counter()
            init_codes = np.broadcast_to(np.asarray(request.init_codes, np.int32), (batch, self.total_tokens))
            state = prefill(self.params, cross_kv, encoder_mask, state,
                            jax.device_put(np.ascontiguousarray(init_codes), self._batch_sharding(2)),
                            put(np.int32(first)))
            # Waited for once, so the report can tell the prefill from the decoding after it.
            state.tokens.block_until_ready()
            timings["prefill_secs"] = time.perf_counter() - started
        return JobStart(cross_kv, encoder_mask, state, first)

    def _generate_codes(self, request, on_progress, cancel, steps_per_chunk, on_preview=None):
        self.check_continuation(request)
        seed = request.seed or random_seed()
        sampling = request.sampling()
        programs = self.programs(request.num_images)
        steps = steps_per_chunk or self.chunk_steps
        first = self.first_position(request)
        if (self.total_tokens - first) % steps:
            raise ValueError(f"steps_per_chunk must divide {self.total_tokens - first}")
        put = lambda value: jax.device_put(value, self._replicated)
        device_sampling = {"top_k": put(np.int32(min(sampling["top_k"], 2**31 - 1))),
                           **{name: put(np.float32(sampling[name]))
                              for name in ("top_p", "temperature", "condition_scale")}}
        timings = {}
        cross_kv, encoder_mask, state, _ = self.start_job(request, programs, seed, timings)
        total = self.total_tokens
        previews = None
        if on_preview is not None and self.preview_every != 0:
            every = self.preview_every and _round_up(self.preview_every, steps)
            previews = preview.PreviewSchedule(on_preview, total, request.num_images, every,
                                               min_spacing=self.row_length, first=first)
        in_flight: list[tuple[int, jax.Array]] = []
        for start in range(first, total, steps):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            chunk = self._compile_chunk(programs, start, steps)
            state, marker = chunk(self.params, cross_kv, encoder_mask, state, put(np.int32(start)), device_sampling)
            in_flight.append((start + steps, marker))
            if len(in_flight) > 1:
                self._report(in_flight.pop(0), on_progress, total, previews)
        while in_flight:
            self._report(in_flight.pop(0), on_progress, total, previews)
        if previews is not None:
            timings["previews"] = previews.count
            timings["preview_secs"] = previews.spent
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled()
        return state.codes, seed, sampling, timings

    @staticmethod
    def _report(done_marker, on_progress, total, previews=None):
        done, marker = done_marker  # marker: the codes after `done` tokens
        marker.block_until_ready()
        if on_progress is not None:
            on_progress(done, total)
        if previews is not None:
            previews.offer(done, marker)

    def generate(self, request: GenerationRequest, on_progress=None, cancel: threading.Event | None = None,
                 on_preview=None) -> GenerationResult:
        """`on_preview(K, codes)`: now and then between chunks (`preview_every`), the first K
        codes of each image [num_images, K], exactly those the result will start with; it
        runs on the generating thread, which may call `preview_pictures`."""
        request.validate()
        with self._lock:
            started = time.perf_counter()
            codes, seed, sampling, timings = self._generate_codes(request, on_progress, cancel, None, on_preview)
            codes = np.asarray(codes)[:request.num_images]  # waits for the last chunk
            tokens_done = time.perf_counter()
            pixels = self.decode_images(codes)
            if self.preview_method == "table":  # the colours of the codes used, for later previews
                self.colours.learn(codes, pixels)
            vqgan_done = time.perf_counter()
        images = [Image.fromarray(np.round(p * 255).astype(np.uint8), "RGB") for p in pixels]
        return GenerationResult(
            images=images, seed=seed, params=sampling, codes=codes,
            timings={"tokens_secs": tokens_done - started, "vqgan_secs": vqgan_done - tokens_done, **timings})


# ---------------------------------------------------------------- loading


def enable_compilation_cache(cache_dir: Path) -> Path:
    """Keep compiled programs in `<cache_dir>/jax-compilation-cache`, so a restart is quick."""
    folder = Path(cache_dir) / COMPILATION_CACHE_SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _vqgan_decoder_only(path: str) -> bool:
    return not path.startswith(("encoder/", "quant_conv/"))


def load_engine(model: str, cache_dir: Path = Path("cache"), *, dtype: str | None = None,
                devices=None, batch_per_device: int | None = None, progress: LoadProgress | None = None,
                endpoint: str | None = None, cache_blocks: int | None = None) -> Engine:
    """Resolve, read and place a model: `tiny`, `mini`, `mega`, `mega_full` or a folder.

    `dtype` overrides the weights' dtype (e.g. "bfloat16"); by default published models use
    their registry dtype and folders keep what the file stores. `batch_per_device` sets how
    many images share one program (default: 1 on a CPU, ACCELERATOR_BATCH elsewhere).
    `progress` hears of downloads and of the reading stage; `endpoint` is the hub's address.
    `cache_blocks` splits the self-attention cache (default: by its size, see CPU_CACHE_BLOCKS).
    """
    from .text_normalizer import TextNormalizer
    from .tokenizer import TextTokenizer
    from .vqgan import VQGANConfig, init_vqgan_params

    files = resolve_model(model, cache_dir, progress, endpoint)
    if progress is not None:
        progress.set_stage(Stage.READING)
    enable_compilation_cache(cache_dir)
    config = DalleBartConfig.from_dict(_read_json(files.dalle_dir / "config.json"))
    weights_dtype = dtype or files.dtype
    dtype_for = checkpoint.cast_floats_to(weights_dtype) if weights_dtype else checkpoint.keep_dtype
    params = checkpoint.read_checkpoint(files.dalle_dir / "flax_model.msgpack",
                                        dallebart.expected_param_shapes(config), dtype_for)
    vqgan_config = VQGANConfig.from_dict(_read_json(files.vqgan_dir / "config.json"))
    vqgan_shapes = jax.eval_shape(lambda: init_vqgan_params(vqgan_config, jax.random.PRNGKey(0)))
    vqgan_file = files.vqgan_dir / "flax_model.msgpack"
    vqgan_params = checkpoint.read_checkpoint(
        vqgan_file, checkpoint.tree_shapes(vqgan_shapes),
        checkpoint.cast_floats_to(np.float32), keep=_vqgan_decoder_only)
    tokenizer = TextTokenizer.from_folder(files.dalle_dir)
    normalizer = TextNormalizer(files.word_frequencies) if config.normalize_text else None
    return Engine(files.name, config, params, vqgan_config, vqgan_params, tokenizer, normalizer, devices,
                  batch_per_device=batch_per_device, vqgan_file=vqgan_file, cache_blocks=cache_blocks,
                  colours_dir=Path(cache_dir) / PREVIEW_COLOURS_SUBFOLDER)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise checkpoint.CheckpointError(f"cannot read {path}: {error}") from error
