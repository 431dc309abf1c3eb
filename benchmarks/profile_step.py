"""Where one decoding step's time goes, at a published size, piece by piece.

    python benchmarks/profile_step.py                    # mini, float32, 8 and 1 images
    python benchmarks/profile_step.py --images 8,16 --cache-dir cache

Times the engine's own decoding step (its compiled chunk program, per step) and then each
piece of it alone, built from `dallebart`'s and the generator's own functions on the same
weights and shapes, each jitted on its own and the fastest of several runs kept:

  * the weight matrix products: every matrix of a step (self-attention q/k/v/out,
    cross-attention q/out, the GLU's three, the lm_head) times the step's rows, nothing else.
    Both layouts: [out, in] as the engine stores them, and [in, out] as the checkpoint does.
    The faster is the step's floor (what bench_engine reports the step against);
  * self-attention over the cache (scores, softmax, weighted sum) as the engine's chunks run
    it, over the cache blocks filled so far, averaged over a generation; also over all
    positions, and reading the whole cache once (the memory floor of the latter);
  * the cache update (the new keys/values written in place);
  * cross-attention over the encoder states;
  * layer norms, GELU and residual adds (the elementwise rest);
  * sampling (super-conditioning, top-k among 16,384 scores, top-p, one draw per row);
  * reading the step's weights once (memory bandwidth: a lower bound for the products).

The pieces do not add up to the step exactly: XLA fuses across them in the step.

With --attention-formulations, the self-attention over all positions written other ways
(products with the cache as the left operand, multiply and sum, two query rows a product, all
heads in one product, rows in two arrays), each timed alone: what XLA could run faster.

With --runner, also the batch runner's step at the same image counts (issue 30): its chunk
programs over a whole generation, each row at its own position, prompt and sampling values.

With --vqgan, the VQGAN decoder the same way: its time per image (at the engine's VQGAN
batch) against its floor, each of its convolutions and matrix products timed alone at its
own shapes (their FLOPs at the rate this machine reaches for that shape), summed.

The tables in docs/engine.md ("Where a decoding step's time goes") come from this script.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import fastest, finish, step_matrices, weight_products  # noqa: E402


def chained(attend):
    """`attend(queries, layer)` over every layer, jitted, each layer's queries waiting for the
    one before (as in the step: an attention timed over independent layers runs them at once)."""
    import jax

    def run(layers, queries):
        for layer in layers:
            queries = queries + 1e-3 * attend(queries, layer)
        return queries

    return jax.jit(run)


def read_bandwidth(arrays) -> float:
    """Seconds to read every array once (a sum each): what streaming them from memory costs."""
    import jax

    return fastest(jax.jit(lambda arrays: [a.sum() for a in arrays]), arrays)


def profile(engine, images: int, position: int) -> dict:
    import jax
    import jax.numpy as jnp

    from backend.engine import GenerationRequest, dallebart
    from backend.engine.attention import attention
    from backend.engine.generator import _sample

    config, params = engine.config, engine.params
    heads = config.decoder_attention_heads
    rows, layers = 2 * images, params["decoder"]["layers"]
    head_size = config.d_model // heads
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((images, 2, config.d_model), np.float32))
    report: dict = {"images": images, "rows": rows}

    # The engine's step: a generation's tokens time over its 256 steps, the best of three.
    request = GenerationRequest("a lighthouse on a cliff at sunset", images, seed=3)
    engine.generate_codes(request)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        engine.generate_codes(request)
        times.append(time.perf_counter() - started)
    report["step_ms"] = 1e3 * min(times) / config.image_length

    matrices = step_matrices(params)
    report["weights_out_in_ms"] = 1e3 * weight_products(matrices, rows, "out_in")
    report["weights_in_out_ms"] = 1e3 * weight_products(matrices, rows, "in_out")
    report["read_weights_once_ms"] = 1e3 * read_bandwidth(matrices)
    report["weight_bytes"] = sum(m.size * m.dtype.itemsize for m in matrices)

    # The self-attention as the engine's chunks run it: over the cache blocks filled so far,
    # averaged over the blocks (a generation spends as many steps in each).
    blocks = engine.cache_blocks
    cache = [tuple((k + 1e-3, v + 1e-3) for k, v in layer)  # real arrays, not broadcast zeros
             for layer in dallebart.empty_cache(config, images, engine.cache_dtype, blocks)]
    queries = jnp.asarray(rng.standard_normal((rows, 1, heads, head_size), np.float32))  # (2B, 1, H, hd)
    block_size = config.image_length // blocks
    per_block = []
    for last in range(blocks):
        read = [layer[:last + 1] for layer in cache]
        bias = dallebart._mask_bias(jnp.arange((last + 1) * block_size) <= last * block_size + block_size // 2)
        self_attention = chained(lambda queries, layer, bias=bias: attention(queries, layer, bias))
        per_block.append(fastest(self_attention, read, queries))
    report["self_attention_ms"] = 1e3 * sum(per_block) / blocks
    report["self_attention_all_positions_ms"] = 1e3 * per_block[-1]
    arrays = [a for layer in cache for pair in layer for a in pair]
    report["read_cache_once_ms"] = 1e3 * read_bandwidth(arrays)
    report["cache_bytes"] = sum(a.nbytes for a in arrays)

    def cache_update(cache, new, position):
        block = position // block_size  # as in the engine's chunk: the one block written to
        return [dallebart.write_position(layer[:block + 1], new, new, position, block) + layer[block + 1:]
                for layer in cache]

    update = jax.jit(cache_update, donate_argnums=0, static_argnums=2)
    new = queries.reshape(rows, heads, 1, head_size).astype(engine.cache_dtype)  # (2B, H, 1, hd)
    cache = update(cache, new, position)  # compiles; the cache is donated from here on
    times = []
    for _ in range(7):
        started = time.perf_counter()
        cache = update(cache, new, position)
        jax.block_until_ready(cache)
        times.append(time.perf_counter() - started)
    report["cache_update_ms"] = 1e3 * min(times)

    text_ids, text_mask = (jnp.asarray(a) for a in engine.encode_text(request.text))
    cross_kv = dallebart.cross_attention_kv(params, config, dallebart.encode(params, config, text_ids, text_mask))
    cross_bias = dallebart._text_bias(text_mask)
    cross_attention = chained(lambda queries, layer: attention(queries, [layer], cross_bias))
    report["cross_attention_ms"] = 1e3 * fastest(cross_attention, cross_kv, queries)

    def elementwise(layers, x, wide):
        # Per layer: the six layer norms, GELU on the GLU's width, the residual adds.
        for layer in layers:
            for name in ("pre_self_attn_norm", "post_self_attn_norm", "pre_cross_attn_norm", "post_cross_attn_norm"):
                x = x + dallebart._layer_norm(x, layer[name])
            x = x + dallebart._layer_norm(x, layer["glu"]["norm"])
            wide = dallebart._layer_norm(jax.nn.gelu(wide, approximate=False) * wide, layer["glu"]["mid_norm"])
        return x, wide

    wide = jnp.asarray(rng.standard_normal((images, 2, config.decoder_ffn_dim), np.float32))
    report["norms_gelu_adds_ms"] = 1e3 * fastest(jax.jit(elementwise), layers, x, wide)

    logits = jnp.asarray(rng.standard_normal((images, 2, config.image_vocab_size + 1), np.float32))
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(0), jnp.arange(images))
    sampling = {"top_k": jnp.int32(64), "top_p": jnp.float32(1.0), "temperature": jnp.float32(1.0),
                "condition_scale": jnp.float32(10.0)}
    sample = jax.jit(functools.partial(_sample, num_codes=engine.num_codes))
    report["sampling_ms"] = 1e3 * fastest(sample, logits, keys, sampling)
    report["floor_ms"] = min(report["weights_out_in_ms"], report["weights_in_out_ms"])
    report["step_over_floor"] = report["step_ms"] / report["floor_ms"]
    return report


def attention_formulations(engine, images: int) -> dict:
    """The self-attention over all positions of every layer, written the ways XLA could run it
    faster, each timed alone (ms); the first is the engine's. On this project's CPU none beats
    it: XLA runs a product with a batch axis on one core, and nothing else comes out faster."""
    import jax
    import jax.numpy as jnp

    from backend.engine.attention import attention

    config = engine.config
    heads = config.decoder_attention_heads
    rows, length, size = 2 * images, config.image_length, config.d_model // heads
    rng = np.random.default_rng(1)
    keys, values = ([jnp.asarray(rng.standard_normal((rows, heads, length, size), np.float32))
                     for _ in range(config.decoder_layers)] for _ in range(2))
    queries = jnp.asarray(rng.standard_normal((rows, heads, size), np.float32))
    bias = jnp.where(jnp.arange(length) <= length // 2, 0.0, -jnp.inf)
    eye = jnp.eye(heads, dtype=jnp.float32)

    def batched(q, k, v):  # the engine's own, one block: products with a (row, head) batch axis
        return attention(q[:, None], [(k, v)], bias)[:, 0]  # q (2B, 1, H, hd)

    def multiply_sum(q, k, v):  # one loop fusion each, no product
        weights = jax.nn.softmax((q[:, :, None] * k).sum(-1) + bias, axis=-1)
        return (weights[..., None] * v).sum(-2)

    def keys_left(q, k, v):  # the cache as the left operand: [t, d] times [d]
        weights = jax.nn.softmax(jax.lax.dot_general(k, q, (((3,), (2,)), ((0, 1), (0, 1)))) + bias, axis=-1)
        return jax.lax.dot_general(v, weights, (((2,), (2,)), ((0, 1), (0, 1))))

    def two_queries(q, k, v):  # two query rows per product: XLA hands these to YNNPACK
        pair = jnp.stack([q, q], 2)
        weights = jax.nn.softmax(jnp.einsum("rhqd,rhtd->rhqt", pair, k) + bias, axis=-1)
        return jnp.einsum("rhqt,rhtd->rhqd", weights, v)[:, :, 0]

    def all_heads(q, k, v):  # one product per row over every head: block-diagonal queries
        flat_k, flat_v = (a.transpose(0, 2, 1, 3).reshape(rows, length, heads * size) for a in (k, v))
        diagonal = (q[:, :, :, None] * eye[:, None, :]).reshape(rows, heads * size, heads)
        weights = jax.nn.softmax(jnp.einsum("rtk,rkh->rht", flat_k, diagonal) + bias, axis=-1)
        every = jnp.einsum("rht,rtk->rhk", weights, flat_v).reshape(rows, heads, heads, size)
        return jnp.einsum("rhgd,hg->rhd", every, eye)

    def split_rows(q, k, v):  # k, v: two arrays of half the rows each, two independent products
        half = rows // 2
        return jnp.concatenate([batched(q[:half], k[0], v[0]), batched(q[half:], k[1], v[1])])

    layers = list(zip(keys, values))
    halves = [((k[:rows // 2], k[rows // 2:]), (v[:rows // 2], v[rows // 2:])) for k, v in layers]
    report = {}
    for name, formulation, inputs in (
            ("batched products (the engine)", batched, layers), ("multiply and sum", multiply_sum, layers),
            ("cache as the left operand", keys_left, layers), ("two query rows a product", two_queries, layers),
            ("all heads of a row in one product", all_heads, layers), ("rows in two separate arrays", split_rows, halves)):
        timed = chained(lambda q, layer, formulation=formulation: formulation(q, *layer))
        report[name] = 1e3 * fastest(timed, inputs, queries, runs=5)
    return report


def vqgan_profile(engine) -> dict:
    """The VQGAN decoder per image against its products alone (convolutions and matrix
    products, each at its own shapes, timed alone), at the engine's VQGAN batch."""
    import jax
    import jax.numpy as jnp

    images = engine.vqgan_batch
    codes = jnp.asarray(np.random.default_rng(0).integers(0, engine.num_codes, (images, engine.total_tokens)),
                        jnp.int32)
    decode = jax.jit(engine._vqgan_fn)
    measured = fastest(decode, engine.vqgan_params, codes, runs=3)
    products: dict = {}

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                shapes = tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars)
                key = (eqn.primitive.name, shapes, repr(sorted(eqn.params.items())))
                entry = products.setdefault(key, {"eqn": eqn, "count": 0})
                entry["count"] += 1
            for value in eqn.params.values():  # the jaxprs inside jit, cond and the like
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        collect(inner)

    collect(jax.make_jaxpr(engine._vqgan_fn)(engine.vqgan_params, codes).jaxpr)
    floor, flops = 0.0, 0
    for entry in products.values():
        eqn = entry["eqn"]
        operands = [jnp.full(v.aval.shape, 0.01, v.aval.dtype) for v in eqn.invars]
        alone = fastest(jax.jit(lambda *a, eqn=eqn: eqn.primitive.bind(*a, **eqn.params)), *operands, runs=3)
        out = math.prod(eqn.outvars[0].aval.shape)
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO
            per_output = math.prod(kernel[:-1])
        else:
            (contracting, _), _ = eqn.params["dimension_numbers"]
            per_output = math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
        floor += entry["count"] * alone
        flops += entry["count"] * 2 * out * per_output
    return {"images": images, "measured_secs_per_image": measured / images, "floor_secs_per_image": floor / images,
            "gflop_per_image": flops / images / 1e9, "products": sum(e["count"] for e in products.values()),
            "distinct_shapes": len(products), "measured_over_floor": measured / floor}


def runner_step(engine, images: int) -> float:
    """Seconds a step of the batch runner's chunk programs (batching.py) over a whole
    generation, every row at the same position: the engine's step made with per-row positions,
    prompts and sampling values. The best of three generations."""
    import jax.numpy as jnp

    from backend.engine.batching import BatchRunner

    runner = BatchRunner(engine, slots=images, sizes=(images,))
    total, steps = engine.total_tokens, engine.chunk_steps
    block = total // engine.cache_blocks
    chunks = [runner._chunk_program(images, min(start + steps - 1, total - 1) // block)
              for start in range(0, total, steps)]
    state = runner._empty_program(images)()
    times = []
    for _ in range(3):
        state = state._replace(positions=jnp.zeros((images,), jnp.int32))
        started = time.perf_counter()
        for chunk in chunks:
            state, codes = chunk(engine.params, state)
        codes.block_until_ready()
        times.append(time.perf_counter() - started)
    return min(times) / total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mini", help="a published size (random weights) or a model folder")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--images", default="8,1", help="comma-separated image counts")
    parser.add_argument("--position", type=int, default=128, help="the step's position for the cache update")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"))
    parser.add_argument("--vqgan", action="store_true", help="also the VQGAN decoder against its floor")
    parser.add_argument("--attention-formulations", action="store_true",
                        help="also the self-attention written other ways, each timed alone")
    parser.add_argument("--runner", action="store_true",
                        help="also the batch runner's step (several jobs' rows) at the same image counts")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    import jax

    from backend.engine import load_engine
    from benchmarks.bench_engine import SIZES, write_random_model

    folder = args.model
    if args.model in SIZES:
        folder = write_random_model(args.cache_dir / f"bench-{args.model}-{args.dtype}", args.model, args.dtype)
    engine = load_engine(str(folder), args.cache_dir, dtype=args.dtype)
    report = {"model": args.model, "dtype": args.dtype, "devices": [str(d) for d in jax.devices()],
              "load_average": os.getloadavg(), "position": args.position, "per_images": []}
    for images in (int(n) for n in args.images.split(",")):
        entry = profile(engine, images, args.position)
        if args.runner:
            entry["runner_step_ms"] = 1e3 * runner_step(engine, images)
        report["per_images"].append(entry)
        print(f"{images} images ({entry['rows']} rows): step {entry['step_ms']:.1f} ms = "
              f"{entry['step_over_floor']:.2f}x the weight products alone ({entry['floor_ms']:.1f} ms)", flush=True)
        for name, value in entry.items():
            if name.endswith("_ms"):
                print(f"  {name[:-3]:<24} {value:8.2f} ms", flush=True)
        if args.attention_formulations:
            entry["attention_formulations_ms"] = formulations = attention_formulations(engine, images)
            print("  self-attention over every position, written other ways:", flush=True)
            for name, value in formulations.items():
                print(f"    {name:<36} {value:8.2f} ms", flush=True)
    if args.vqgan:
        report["vqgan"] = vqgan = vqgan_profile(engine)
        print(f"VQGAN, {vqgan['images']} images a call: {vqgan['measured_secs_per_image']:.2f} s per image = "
              f"{vqgan['measured_over_floor']:.2f}x its {vqgan['products']} products alone "
              f"({vqgan['floor_secs_per_image']:.2f} s, {vqgan['gflop_per_image']:.0f} GFLOP)", flush=True)
    finish(report, args.json)


if __name__ == "__main__":
    main()
