"""The one attention of every model here: DalleBart's encoder and decoder, CLIP's two towers
and the VQGAN's attention blocks. Callers only choose where the keys and values come from
(the same hidden states, the decoder's cache, the prompt's encoder states) and the bias."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(queries, blocks, bias):
    """softmax(queries · keys / sqrt(head size) + bias) · values.

    queries [R, Q, H, hd]; blocks: (keys, values) pairs [R_k, H, K_i, hd] holding consecutive
    key positions, heads before positions as the products read them. Most callers give one
    pair; the decoding step gives its cache's blocks, separate arrays, so that it reads only
    the blocks filled so far. Query row r reads key row r mod R_k: R_k is R, or 2 where the
    decoder's rows (each image's conditional and unconditional row, next to each other) read
    the two encoder rows' keys, which are thus never copied per image. bias broadcasts to the
    scores [R / R_k, R_k, H, Q, K]: 0 where a key counts, very negative where it does not.

    The products take the queries in the keys' dtype and the weights in the values' (the
    stored dtype: half precision for Mega) and accumulate in float32; scores and softmax are
    float32. Returns [R, Q, H, hd] float32.
    """
    keys_dtype, key_rows = blocks[0][0].dtype, blocks[0][0].shape[0]
    heads_first = queries.swapaxes(1, 2)  # (R, H, Q, hd)
    if key_rows != queries.shape[0]:  # grouped only then: a unit axis makes XLA's CPU products slower
        heads_first = heads_first.reshape((-1, key_rows) + heads_first.shape[1:])  # (R / R_k, R_k, H, Q, hd)
    heads_first = (heads_first * queries.shape[-1] ** -0.5).astype(keys_dtype)
    scores = jnp.concatenate([jnp.einsum("...hqd,...hkd->...hqk", heads_first, keys, preferred_element_type=jnp.float32)
                              for keys, _ in blocks], axis=-1)  # (..., H, Q, K)
    weights = jax.nn.softmax(scores + bias, axis=-1)
    attended, start = [], 0
    for _, values in blocks:
        part = weights[..., start:start + values.shape[-2]].astype(values.dtype)
        attended.append(jnp.einsum("...hqk,...hkd->...hqd", part, values, preferred_element_type=jnp.float32))
        start += values.shape[-2]
    attended = sum(attended[1:], attended[0]).reshape(queries.shape[:1] + heads_first.shape[-3:])  # (R, H, Q, hd)
    return attended.swapaxes(1, 2)  # (R, Q, H, hd)
