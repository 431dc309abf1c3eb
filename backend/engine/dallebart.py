"""DalleBart (the DALL·E Mini / Mega text-to-image-token transformer) as plain JAX functions.

Parameters are the nested dict of the official `flax_model.msgpack` (scanned layout: every
layer weight is stacked on a leading axis of size L), so a published checkpoint is used as
is once `unstack_layers` has split the stacks into per-layer views.

One decoder layer (`_decoder_layer`) and one attention (`attention.attention`) serve three
callers, which differ only in where the self-attention's keys and values go:

* `decode_step`, the fast path: one position for every row, its keys and values written into
  the cache and the cache attended to; the cross-attention keys/values are computed once per
  prompt (`cross_attention_kv`). Each image has two rows, conditional and unconditional, next
  to each other on one axis (2b and 2b + 1), read against the two encoder rows' keys without
  copying those per image. Layers are unrolled, each with its own cache arrays ([2B, H, T,
  hd]), which the decoding loop updates in place: with a separate axis of size B, one image's
  cache has a unit axis that keeps XLA from updating it in place, and reading the cache
  through a [B, 2, ...] view made XLA copy it too (every layer's cache at every step). The
  positions may be split into blocks, separate arrays, so that a step
  reads only the blocks filled so far (a CPU's step is bound by these reads; XLA copies a
  slice of one array before a product, so a slice would not save them).
* `prefill_cache`: the kept positions of a continuation in one causal pass, their keys and
  values written into the cache.
* `decode_full`: the plain full-sequence forward pass without a cache, which the fast path
  is tested against and training differentiates.

Activations, layer norms and softmaxes are float32; matrix products take the weights in
their stored dtype (float16 for Mega) and accumulate in float32. `unstack_layers` stores every
dense kernel transposed, [out, in]: a decoding step multiplies a few rows by each weight
matrix, and on a CPU XLA streams a [out, in] matrix against them (kernel @ rowsᵀ) about twice
as fast as an [in, out] one (docs/engine.md, "Where a decoding step's time goes").
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .attention import attention

LAYER_NORM_EPS = 1e-5
ENCODER_LAYERS = "FlaxBartEncoderLayers"
DECODER_LAYERS = "FlaxBartDecoderLayers"

# What the published configs fix; anything else needs code this module does not have.
_REQUIRED_OPTIONS = {
    "ln_type": "layernorm",
    "ln_positions": "normformer",
    "use_glu": True,
    "use_bias": False,
    "use_final_ln_encoder": True,
    "use_final_ln_decoder": True,
    "force_ln_scale": False,
    "scale_embedding": False,
    "use_scan": True,
    "tie_word_embeddings": False,
    "use_absolute_position_embeddings": True,
    "use_alibi": False,
    "use_cosine_attention": False,
    "use_deepnet_scaling": False,
    "use_head_scale": False,
    "use_swin_position_embeddings": False,
    "activation_function": "gelu",
}


@dataclasses.dataclass(frozen=True)
class DalleBartConfig:
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    encoder_vocab_size: int
    image_vocab_size: int
    max_text_length: int = 64
    image_length: int = 256
    normalize_text: bool = True
    # Both published models use 16384 and 16385 (Mega's image vocabulary is padded to 16415).
    decoder_start_token_id: int = 16384
    pad_token_id: int = 16385

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DalleBartConfig:
        """Read an official `config.json`; refuse options this implementation lacks."""
        for key, required in _REQUIRED_OPTIONS.items():
            if key in data and data[key] != required:
                raise ValueError(f"config.json: {key}={data[key]!r} is not supported (need {required!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names[:9] if n not in data]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        config = cls(**{n: data[n] for n in names if n in data})
        for heads in (config.encoder_attention_heads, config.decoder_attention_heads):
            if config.d_model % heads:
                raise ValueError("config.json: d_model must be a multiple of the attention heads")
        if not 0 <= config.decoder_start_token_id <= config.image_vocab_size:
            raise ValueError("config.json: decoder_start_token_id must be a row of the decoder embedding")
        return config

    def to_dict(self) -> dict[str, Any]:
        """The full official `config.json` content for this configuration."""
        data = dict(_REQUIRED_OPTIONS)
        data.update(dataclasses.asdict(self))
        data.update(
            bos_token_id=self.pad_token_id,
            eos_token_id=self.pad_token_id,
            pad_token_id=self.pad_token_id,
            min_length=self.image_length + 1,
            max_length=self.image_length + 1,
            is_encoder_decoder=True,
            do_sample=True,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            init_std=0.02,
            use_cache=True,
            gradient_checkpointing=False,
            sinkhorn_iters=1,
            tau_init=0.05,
            model_type="dallebart",
            architectures=["eBart"],
        )
        return data


def expected_param_shapes(config: DalleBartConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter path of a checkpoint for `config`, with its shape (no allocation)."""
    d, v_img = config.d_model, config.image_vocab_size + 1
    shapes: dict[str, tuple[int, ...]] = {"lm_head/kernel": (d, v_img)}
    for side, vocab, length, layers, ffn, stack in (
        ("encoder", config.encoder_vocab_size, config.max_text_length, config.encoder_layers,
         config.encoder_ffn_dim, ENCODER_LAYERS),
        ("decoder", v_img, config.image_length, config.decoder_layers, config.decoder_ffn_dim,
         DECODER_LAYERS),
    ):
        top = f"model/{side}"
        shapes[f"{top}/embed_tokens/embedding"] = (vocab, d)
        shapes[f"{top}/embed_positions/embedding"] = (length, d)
        shapes[f"{top}/layernorm_embedding/scale"] = (d,)
        shapes[f"{top}/layernorm_embedding/bias"] = (d,)
        shapes[f"{top}/final_ln/bias"] = (d,)
        layer = f"{top}/layers/{stack}"
        attentions = ["FlaxBartAttention_0"] + (["FlaxBartAttention_1"] if side == "decoder" else [])
        for module in attentions:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[f"{layer}/{module}/{proj}/kernel"] = (layers, d, d)
        # Normformer: pre-norms are bias-only, post-attention norms have scale and bias.
        norms = ["LayerNorm_0", "LayerNorm_1"] + (["LayerNorm_2", "LayerNorm_3"] if side == "decoder" else [])
        for i, name in enumerate(norms):
            shapes[f"{layer}/{name}/bias"] = (layers, d)
            if i % 2:
                shapes[f"{layer}/{name}/scale"] = (layers, d)
        shapes[f"{layer}/GLU_0/LayerNorm_0/bias"] = (layers, d)
        shapes[f"{layer}/GLU_0/LayerNorm_1/bias"] = (layers, ffn)
        shapes[f"{layer}/GLU_0/Dense_0/kernel"] = (layers, d, ffn)
        shapes[f"{layer}/GLU_0/Dense_1/kernel"] = (layers, d, ffn)
        shapes[f"{layer}/GLU_0/Dense_2/kernel"] = (layers, ffn, d)
    return shapes


def random_params(config: DalleBartConfig, seed: int, dtype=np.float32, std: float = 0.02,
                  normal=None) -> dict:
    """Deterministic random weights in the checkpoint layout (for tests, the tiny model, benchmarks).

    `normal(shape)` gives standard normal float32 values, leaf after leaf in sorted path order;
    by default numpy draws them from `seed`.
    """
    if normal is None:
        rng = np.random.default_rng(seed)
        normal = lambda shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    tree: dict = {}
    for path, shape in sorted(expected_param_shapes(config).items()):
        if path.endswith("/scale"):
            leaf = 1.0 + 0.1 * normal(shape)
        elif path.endswith("/bias"):
            leaf = 0.1 * normal(shape)
        else:
            leaf = std * normal(shape)
        node = tree
        *parents, name = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = leaf.astype(dtype)
    return tree


# ---------------------------------------------------------------- the layout the code uses


def unstack_layers(params) -> dict:
    """The checkpoint tree in the layout every function below takes.

    Each layer stack is split into a list of layers: slicing a stack inside the decoding loop
    would copy every weight at every step on some backends, while numpy slices on the host are
    views (no copy). Kernels become [out, in] (`_dense`); on numpy that is a view too, made
    contiguous when placed on a device. And the checkpoint's generic names (`LayerNorm_2`,
    `FlaxBartAttention_1`, `GLU_0/Dense_0`) become what each piece is; they appear only here and
    in `expected_param_shapes`. Traceable, so training can differentiate through it.
    """
    model = params["model"]
    return {
        "encoder": _side(model["encoder"], ENCODER_LAYERS, _encoder_layer_weights),
        "decoder": _side(model["decoder"], DECODER_LAYERS, _decoder_layer_weights),
        "lm_head": _out_in(params["lm_head"]["kernel"]),
    }


def _out_in(kernel):
    """A checkpoint kernel [in, out] as `_dense` takes it, [out, in]."""
    return kernel.swapaxes(-1, -2)


def _side(tree, stack_name: str, name_layer) -> dict:
    stack = tree["layers"][stack_name]
    count = len(jax.tree_util.tree_leaves(stack)[0])
    return {
        "embed_tokens": tree["embed_tokens"]["embedding"],
        "embed_positions": tree["embed_positions"]["embedding"],
        "embedding_norm": tree["layernorm_embedding"],
        "final_norm": tree["final_ln"],
        "layers": [name_layer(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stack)) for i in range(count)],
    }


def _attention_weights(tree) -> dict:
    return {name: _out_in(tree[f"{name}_proj"]["kernel"]) for name in ("q", "k", "v", "out")}


def _glu_weights(tree) -> dict:
    return {"norm": tree["LayerNorm_0"], "gate": _out_in(tree["Dense_0"]["kernel"]),
            "up": _out_in(tree["Dense_1"]["kernel"]), "mid_norm": tree["LayerNorm_1"],
            "down": _out_in(tree["Dense_2"]["kernel"])}


def _encoder_layer_weights(tree) -> dict:
    # Normformer: a bias-only norm before attention, a scaled norm after it.
    return {"pre_attn_norm": tree["LayerNorm_0"], "self_attn": _attention_weights(tree["FlaxBartAttention_0"]),
            "post_attn_norm": tree["LayerNorm_1"], "glu": _glu_weights(tree["GLU_0"])}


def _decoder_layer_weights(tree) -> dict:
    return {"pre_self_attn_norm": tree["LayerNorm_0"], "self_attn": _attention_weights(tree["FlaxBartAttention_0"]),
            "post_self_attn_norm": tree["LayerNorm_1"],
            "pre_cross_attn_norm": tree["LayerNorm_2"], "cross_attn": _attention_weights(tree["FlaxBartAttention_1"]),
            "post_cross_attn_norm": tree["LayerNorm_3"], "glu": _glu_weights(tree["GLU_0"])}


# ---------------------------------------------------------------- building blocks


def _layer_norm(x, norm):
    """LayerNorm in float32 with the norm's bias and, where it has one, its scale."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
    if "scale" in norm:
        y = y * norm["scale"].astype(jnp.float32)
    return y + norm["bias"].astype(jnp.float32)


def _dense(x, kernel):
    """x [..., in] times a kernel stored [out, in]: [..., out], the weight's dtype as input and
    a float32 result."""
    rows = x.reshape(-1, x.shape[-1]).astype(kernel.dtype)
    product = jax.lax.platform_dependent(kernel, rows, cpu=_cpu_product, default=_product)
    return product.reshape(x.shape[:-1] + (kernel.shape[0],))


def _product(kernel, rows):
    return jax.lax.dot_general(rows, kernel, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _cpu_product(kernel, rows):
    """kernel @ rowsᵀ, transposed: the form XLA's CPU backend runs fastest for a few rows. The
    barrier keeps XLA from folding the transpose back into the product (rows @ kernelᵀ, slower)."""
    product = jax.lax.dot_general(kernel, rows, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(product).T


def _project_heads(x, kernel, heads: int):
    """x @ kernel split into heads: [..., D] → [..., heads, D / heads]."""
    projected = _dense(x, kernel)
    return projected.reshape(projected.shape[:-1] + (heads, projected.shape[-1] // heads))  # (..., H, hd)


def _keys_values(attn, x, heads: int):
    """The keys and values of x [..., K, D], each [..., H, K, hd]: heads before positions, as
    the cache holds them and the products read them."""
    return tuple(_project_heads(x, attn[name], heads).swapaxes(-3, -2) for name in ("k", "v"))


def _attention_block(attn, x, blocks, bias, post_norm, heads: int):
    """Attention from x [R, Q, D] (already normed) over blocks of keys and values, projected
    out and normed: what a residual block adds to its input."""
    return _out_block(attn, attention(_project_heads(x, attn["q"], heads), blocks, bias), post_norm)


def _out_block(attn, attended, post_norm):
    """Attended values [R, Q, H, hd] merged, projected out and normed."""
    merged = attended.reshape(attended.shape[:-2] + (-1,))  # (R, Q, D)
    return _layer_norm(_dense(merged, attn["out"]), post_norm)


class RowPrompts(NamedTuple):
    """The text a batch of several jobs' rows attends to (batching.py): each image's own
    prompt for its conditional row, and the empty prompt, the same for every job, for all the
    unconditional rows. Kept once rather than per row, the empty prompt's keys are read by one
    product for all rows: per row, the cross-attention's many tiny products cost a fifth of
    a 16-image step on a CPU (docs/engine.md)."""
    conditional: Any  # per image: keys and values [B, H, S, hd], or its mask [B, S]
    unconditional: Any  # the empty prompt's: [1, H, S, hd], or [1, S]


def _cross_attention_block(attn, x, cross_kv, cross_bias, post_norm, heads: int):
    """The cross-attention residual block: x [R, Q, D] over the text's keys and values, the
    encoder rows' (see `attention.attention`) or, for a batch of jobs (Q = 1), `RowPrompts`."""
    queries = _project_heads(x, attn["q"], heads)  # (R, Q, H, hd)
    if not isinstance(cross_kv, RowPrompts):
        return _out_block(attn, attention(queries, [cross_kv], cross_bias), post_norm)
    pairs = queries.reshape((-1, 2) + queries.shape[-2:])  # (B, 2, H, hd): image b's two rows
    conditional = attention(pairs[:, :1], [cross_kv.conditional], cross_bias.conditional)  # (B, 1, H, hd)
    # The unconditional rows as the positions of one row: one product with the shared keys.
    unconditional = attention(pairs[None, :, 1], [cross_kv.unconditional], cross_bias.unconditional)  # (1, B, H, hd)
    attended = jnp.stack([conditional[:, 0], unconditional[0]], axis=1).reshape(queries.shape)
    return _out_block(attn, attended, post_norm)


def _glu(glu, x):
    hidden = _layer_norm(x, glu["norm"])
    hidden = jax.nn.gelu(_dense(hidden, glu["gate"]), approximate=False) * _dense(hidden, glu["up"])
    return _dense(_layer_norm(hidden, glu["mid_norm"]), glu["down"])


def _embed(side, token_ids, positions):
    x = jnp.take(side["embed_tokens"], token_ids, axis=0).astype(jnp.float32)
    x = x + jnp.take(side["embed_positions"], positions, axis=0).astype(jnp.float32)
    return _layer_norm(x, side["embedding_norm"])


def _mask_bias(mask):
    return jnp.where(mask, 0.0, -jnp.inf).astype(jnp.float32)


def _text_bias(attention_mask):
    """The bias over the text positions of each encoder row: [R, S] → [R, 1, 1, S]."""
    return _mask_bias(attention_mask > 0)[:, None, None, :]


# ---------------------------------------------------------------- encoder
# All functions below take the `unstack_layers` layout.


def encode(params, config: DalleBartConfig, input_ids, attention_mask):
    """Text tokens [R, S] → encoder states [R, S, D] (float32)."""
    encoder = params["encoder"]
    heads = config.encoder_attention_heads
    x = _embed(encoder, input_ids, jnp.arange(input_ids.shape[1]))  # (R, S, D)
    bias = _text_bias(attention_mask)
    for layer in encoder["layers"]:
        hidden = _layer_norm(x, layer["pre_attn_norm"])
        blocks = [_keys_values(layer["self_attn"], hidden, heads)]
        x = x + _attention_block(layer["self_attn"], hidden, blocks, bias, layer["post_attn_norm"], heads)
        x = x + _glu(layer["glu"], x)
    return _layer_norm(x, encoder["final_norm"])


# ---------------------------------------------------------------- decoder


def _decoder_layer(layer, x, positions, remember, cross_kv, cross_bias, heads: int):
    """One decoder layer on rows x [R, Q, D] at `positions` [Q] (or [R, Q], each row at its
    own positions): causal self-attention,
    cross-attention to the text, then the GLU, each a residual block.

    remember(keys, values) takes the layer's new self-attention keys and values [R, H, Q, hd]
    and returns the blocks to attend to (key positions 0, 1, …) and what the caller keeps of
    them; the layer returns x and that. cross_kv: the text's keys and values [R or 2, H, S, hd]
    (see `attention.attention` for 2), or a batch of jobs' `RowPrompts`.
    """
    hidden = _layer_norm(x, layer["pre_self_attn_norm"])
    blocks, kept = remember(*_keys_values(layer["self_attn"], hidden, heads))
    key_positions = jnp.arange(sum(keys.shape[-2] for keys, _ in blocks))
    causal_bias = _mask_bias(key_positions <= positions[..., None])  # (Q, K), or (R, Q, K) per row
    if positions.ndim == 2:  # rows at their own positions: a bias per row, for every head
        causal_bias = causal_bias[:, None]
    x = x + _attention_block(layer["self_attn"], hidden, blocks, causal_bias, layer["post_self_attn_norm"], heads)
    hidden = _layer_norm(x, layer["pre_cross_attn_norm"])
    x = x + _cross_attention_block(layer["cross_attn"], hidden, cross_kv, cross_bias, layer["post_cross_attn_norm"],
                                   heads)
    return x + _glu(layer["glu"], x), kept


def _decoder(params, config: DalleBartConfig, tokens, positions, remembers, cross_kv, encoder_mask):
    """The decoder on rows of tokens [R, Q] at `positions` [Q] or [R, Q], layer i's self-attention keys
    and values through remembers[i] → logits [R, Q, V] and what each layer's remember kept."""
    decoder = params["decoder"]
    x = _embed(decoder, tokens, positions)  # (R, Q, D)
    cross_bias = jax.tree_util.tree_map(_text_bias, encoder_mask)  # a mask, or RowPrompts of two
    kept = []
    for layer, remember, layer_cross_kv in zip(decoder["layers"], remembers, cross_kv):
        x, layer_kept = _decoder_layer(layer, x, positions, remember, layer_cross_kv, cross_bias,
                                       config.decoder_attention_heads)
        kept.append(layer_kept)
    x = _layer_norm(x, decoder["final_norm"])
    return _dense(x, params["lm_head"]), kept


def cross_attention_kv(params, config: DalleBartConfig, encoder_states):
    """Per layer, the cross-attention keys and values [R, H, S, hd] of encoder states [R, S, D],
    in the weights' dtype: computed once per prompt, in the layout the products read (as
    [R, S, H, hd], XLA transposes them per call)."""
    heads = config.decoder_attention_heads
    result = []
    for layer in params["decoder"]["layers"]:
        attn = layer["cross_attn"]
        result.append(tuple(a.astype(attn["k"].dtype) for a in _keys_values(attn, encoder_states, heads)))
    return result


def empty_cache(config: DalleBartConfig, batch: int, dtype, blocks: int = 1):
    """Per layer, the self-attention cache as `blocks` blocks of positions, each a (keys, values)
    pair [2B, H, T / blocks, hd]: the rows of image b are 2b (conditional) and 2b + 1
    (unconditional); positions next to each other."""
    heads = config.decoder_attention_heads
    if config.image_length % blocks:
        raise ValueError(f"{blocks} cache blocks do not divide {config.image_length} positions")
    shape = (2 * batch, heads, config.image_length // blocks, config.d_model // heads)
    return [tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(blocks))
            for _ in range(config.decoder_layers)]


def cache_bytes(config: DalleBartConfig, batch: int, itemsize: int) -> int:
    """The size of `batch` images' self-attention cache: keys and values, both rows, every position."""
    return 2 * config.decoder_layers * 2 * batch * config.image_length * config.d_model * itemsize


def decode_step(params, config: DalleBartConfig, tokens, position, cache, cross_kv, encoder_mask,
                first_written: int = 0):
    """One decoder position for every row: the fast path.

    tokens [B, 2] int32 (the previous token of each conditional/unconditional row), position a
    scalar, cache from `empty_cache` or its first blocks: those up to the one holding the
    position (attended to), where blocks from `first_written` on may hold it. cross_kv from
    `cross_attention_kv` on the two encoder rows (conditional, unconditional), encoder_mask
    [2, S]. Returns logits [B, 2, V] and the blocks given, updated.
    """
    def remember(blocks, keys, values):  # (2B, H, 1, hd) each
        written = write_position(blocks, keys, values, position, first_written)
        return written, written

    remembers = [functools.partial(remember, blocks) for blocks in cache]
    rows = tokens.reshape(-1, 1)  # (2B, 1): image b's rows are 2b and 2b + 1, as in the cache
    logits, new_cache = _decoder(params, config, rows, jnp.reshape(position, (1,)), remembers, cross_kv,
                                 encoder_mask)
    return logits.reshape(tokens.shape + (-1,)), new_cache  # (B, 2, V)


def write_position(blocks, keys, values, position, first_written: int = 0):
    """One layer's cache blocks with keys/values [2B, H, 1, hd] written, in place, at `position`
    of the block from `first_written` on that holds it. With one candidate block that is a
    plain update; with several, every candidate rewrites its own entry unless it holds the
    position (the index is clamped into each block, so the others write back what they had)."""
    size = blocks[0][0].shape[2]
    candidates = range(first_written, len(blocks))
    written = list(blocks[:first_written])
    for index, pair in zip(candidates, blocks[first_written:]):
        at = (0, 0, position - index * size, 0)
        if len(candidates) > 1:
            holds = (position >= index * size) & (position < (index + 1) * size)
            new_pair = tuple(jnp.where(holds, new.astype(cached.dtype), jax.lax.dynamic_slice(cached, at, new.shape))
                             for cached, new in zip(pair, (keys, values)))
        else:
            new_pair = tuple(new.astype(cached.dtype) for cached, new in zip(pair, (keys, values)))
        written.append(tuple(jax.lax.dynamic_update_slice(cached, new, at) for cached, new in zip(pair, new_pair)))
    return tuple(written)


def decode_rows_step(params, config: DalleBartConfig, tokens, positions, cache, cross_kv, encoder_mask):
    """`decode_step` with every image at its own position and with its own prompt: the step
    of a batch of several jobs (batching.py).

    tokens [B, 2], positions [B] int32 (a row at T or beyond computes at T - 1 and writes
    nothing), cache as in `decode_step` (every block given may be written), cross_kv (per
    layer) and encoder_mask as `RowPrompts`: each image's prompt and the empty prompt.
    """
    row_positions = jnp.repeat(positions, 2)  # (2B,)

    def remember(blocks, keys, values):  # (2B, H, 1, hd) each
        written = write_rows(blocks, keys, values, row_positions)
        return written, written

    remembers = [functools.partial(remember, blocks) for blocks in cache]
    rows = tokens.reshape(-1, 1)
    within = jnp.minimum(row_positions, config.image_length - 1)[:, None]  # (2B, 1)
    logits, new_cache = _decoder(params, config, rows, within, remembers, cross_kv, encoder_mask)
    return logits.reshape(tokens.shape + (-1,)), new_cache  # (B, 2, V)


def write_rows(blocks, keys, values, row_positions):
    """One layer's cache blocks with keys/values [2B, H, 1, hd] written, in place, each row at
    its own position: a scatter per block, which drops the rows whose position it does not hold."""
    size = blocks[0][0].shape[2]
    rows = jnp.arange(keys.shape[0])
    written = []
    for index, pair in enumerate(blocks):
        local = row_positions - index * size
        local = jnp.where((local >= 0) & (local < size), local, size)  # `size`: out of range, dropped
        written.append(tuple(cached.at[rows, :, local].set(new[:, :, 0].astype(cached.dtype), mode="drop")
                             for cached, new in zip(pair, (keys, values))))
    return tuple(written)


def prefill_cache(params, config: DalleBartConfig, tokens, cache, cross_kv, encoder_mask):
    """The self-attention cache of positions 0..Q-1 for every row, in one causal pass.

    tokens [B, Q] int32 are the decoder inputs of those positions (the start token, then the
    codes kept), the same for the conditional and unconditional row of an image. Each
    position's keys/values are those `decode_step` would have cached for it, so decoding can
    go on at any position p < Q: entries from p on are overwritten before they are attended
    to. The logits are never needed and XLA drops them.
    """
    dtype = cache[0][0][0].dtype

    def remember(blocks, keys, values):  # (2B, H, Q, hd) each
        # Cast as the cache holds them, so later positions attend to exactly these values.
        keys, values = keys.astype(dtype), values.astype(dtype)
        return [(keys, values)], _fill_blocks(blocks, keys, values)

    rows = jnp.repeat(tokens, 2, axis=0)  # (2B, Q): the same inputs for both rows of an image
    remembers = [functools.partial(remember, blocks) for blocks in cache]
    _, new_cache = _decoder(params, config, rows, jnp.arange(tokens.shape[1]), remembers, cross_kv, encoder_mask)
    return new_cache


def _fill_blocks(blocks, keys, values):
    """A layer's cache blocks with keys/values [2B, H, Q, hd] written at positions 0..Q-1."""
    size = blocks[0][0].shape[2]
    filled = []
    for index, pair in enumerate(blocks):
        part = slice(index * size, min((index + 1) * size, keys.shape[2]))
        if part.start >= keys.shape[2]:
            filled.append(pair)
            continue
        filled.append(tuple(jax.lax.dynamic_update_slice(cached, new[:, :, part], (0,) * 4)
                            for cached, new in zip(pair, (keys, values))))
    return tuple(filled)


def decode_full(params, config: DalleBartConfig, decoder_input_ids, encoder_states, encoder_mask):
    """The plain causal forward pass over whole sequences, without a cache (the reference the
    fast path is tested against, and what training differentiates): ids [N, T] with their
    rows' encoder states [N, S, D] and mask [N, S] → logits [N, T, V]."""
    def remember(keys, values):
        return [(keys, values)], None

    remembers = [remember] * config.decoder_layers
    cross_kv = cross_attention_kv(params, config, encoder_states)
    logits, _ = _decoder(params, config, decoder_input_ids, jnp.arange(decoder_input_ids.shape[1]), remembers,
                         cross_kv, encoder_mask)
    return logits
