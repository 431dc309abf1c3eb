"""The one attention of every model here: DalleBart's encoder and decoder, CLIP's two towers
and the VQGAN's attention blocks. Callers only choose where the keys and values come from
(the same hidden states, the decoder's cache, the prompt's encoder states) and the bias."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(queries, blocks, bias):
    """softmax(queries · keys / sqrt(head size) + bias) · values.

    queries [..., Q, H, hd]; blocks: (keys, values) pairs [..., H, K_i, hd] holding consecutive
    key positions, heads before positions as the products read them. Most callers give one
    pair; the decoding step gives its cache's blocks, separate arrays, so that it reads only
    the blocks filled so far. Leading axes broadcast (the decoder's image rows [B, 2, ...] read
    the two encoder rows' keys [2, ...] without copying them per image). bias broadcasts to
    the scores [..., H, Q, K]: 0 where a key counts, very negative where it does not.

    The products take the queries in the keys' dtype and the weights in the values' (the
    stored dtype: half precision for Mega) and accumulate in float32; scores and softmax are
    float32. Returns [..., Q, H, hd] float32.
    """
    dtype = blocks[0][0].dtype
    queries = (queries * queries.shape[-1] ** -0.5).astype(dtype)
    scores = jnp.concatenate([jnp.einsum("...qhd,...hkd->...hqk", queries, keys, preferred_element_type=jnp.float32)
                              for keys, _ in blocks], axis=-1)  # (..., H, Q, K)
    weights = jax.nn.softmax(scores + bias, axis=-1)
    attended, start = [], 0
    for _, values in blocks:
        part = weights[..., start:start + values.shape[-2]].astype(values.dtype)
        attended.append(jnp.einsum("...hqk,...hkd->...qhd", part, values, preferred_element_type=jnp.float32))
        start += values.shape[-2]
    return sum(attended[1:], attended[0])
