"""Write tests/data/reference/: a tiny random DALL·E Mini and VQGAN made, saved and run by the
ORIGINAL code (dalle-mini 0.1.5 and patil-suraj/vqgan-jax), for tests/test_reference_vectors.py.

This script never runs in the project's environment: it needs the original code, in a virtual
environment of its own, kept outside the repository. The versions below are the ones it was
run with. dalle-mini 0.1.5 pins jax 0.3.25 and flax 0.6.3: jaxlib 0.4.13 is the oldest with
Python 3.11 wheels, and flax 0.6.3 fails to import with it (no `pjit.PartitionSpec`); flax
0.7.0 runs dalle-mini there.

    python3.11 -m venv "$REFVENV"
    "$REFVENV/bin/pip" install jax==0.4.13 jaxlib==0.4.13 flax==0.7.0 optax==0.1.7 \
        orbax-checkpoint==0.2.7 transformers==4.25.1 tokenizers==0.13.3 numpy==1.24.4 \
        scipy==1.11.4 einops==0.8.2 unidecode==1.4.0 ftfy==6.3.1 emoji==2.16.0 pillow==13.0.0 \
        wandb==0.31.0
    "$REFVENV/bin/pip" install --no-deps dalle-mini==0.1.5 \
        "git+https://github.com/patil-suraj/vqgan-jax.git@10ef240f8ace869e437f3c32d14898f61512db12"
    "$REFVENV/bin/python" tests/reference/make_vectors.py    # from the repository root

(`--no-deps` because dalle-mini's exact pins cannot be met on Python 3.11.) The only change
to the original code is one alias, below: dalle-mini's `partitions.py` imports
`jax.experimental.PartitionSpec`, which jax 0.4.13 only has as `jax.sharding.PartitionSpec`;
that module is about sharding for training and takes no part in the numbers written here.

What is written, all float32 on the CPU:
  model/                 DalleBart `save_pretrained` files and a BART tokenizer, and in
  model/vqgan/           the VQGAN's `save_pretrained` files: a model folder the playground loads
  vectors.npz            encoder states, teacher-forced logits, greedy sequences, VQGAN pixels
  inputs.json            the prompts and condition scales, the smallest greedy margin, versions

The weights are the original code's own initialisation with these changes, so that the test
can see mistakes: a large init_std (0.25), so greedy choices are clear-cut rather than near
ties; layer-norm scales and all biases drawn at random instead of the 1s and 0s of a fresh
model, so a norm or bias used wrongly shows in the output; a zero lm_head column for the
start token (see `make_dallebart`); the VQGAN's output bias raised by 0.5 (see `make_vqgan`).
It takes a few minutes on a CPU.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict

jax.config.update("jax_platform_name", "cpu")
jax.config.update("jax_default_matmul_precision", "float32")
jax.experimental.PartitionSpec = jax.sharding.PartitionSpec  # see the module's doc

from dalle_mini import DalleBart, DalleBartProcessor  # noqa: E402
from dalle_mini.model.configuration import DalleBartConfig  # noqa: E402
from tokenizers import ByteLevelBPETokenizer  # noqa: E402
from transformers import BartTokenizerFast  # noqa: E402
from vqgan_jax.configuration_vqgan import VQGANConfig  # noqa: E402
from vqgan_jax.modeling_flax_vqgan import VQModel  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "data" / "reference"
# Of seeds 1 to 5, the one whose greedy choices are clearest (smallest gap between the two
# best scores 5e-3, against 2e-4 differences between implementations at condition scale 10).
SEED = 1
PROMPTS = ["a red cube on a blue sphere", "an astronaut riding a horse, oil painting"]
CONDITION_SCALES = [10.0, 3.0]
IMAGE_VOCAB = 64  # = the VQGAN's codebook size, as in the published pair
TOKENIZER_CORPUS = PROMPTS + [
    "a painting of a fox in the snow", "two cats sitting on a wooden table",
    "a photo of a city street at night", "a green tree next to a small house",
]


def make_tokenizer(folder: Path) -> BartTokenizerFast:
    """A small byte-level BPE in BART's format (a BartTokenizerFast saves the usual files)."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TOKENIZER_CORPUS, vocab_size=320, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    with tempfile.TemporaryDirectory() as raw:
        bpe.save_model(raw)
        tokenizer = BartTokenizerFast(vocab_file=f"{raw}/vocab.json", merges_file=f"{raw}/merges.txt")
    tokenizer.save_pretrained(folder)
    return tokenizer


def randomise_norms_and_biases(params, rng: np.random.Generator):
    """Layer-norm scales 1 + 0.1 N(0, 1), biases 0.1 N(0, 1); everything else as initialised."""
    flat = flatten_dict(unfreeze(params))
    for path, leaf in sorted(flat.items()):
        leaf = np.array(leaf)  # a writable numpy copy
        if path[-1] == "scale":
            leaf = (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        elif path[-1] == "bias":
            leaf = (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        flat[path] = leaf
    return freeze(unflatten_dict(flat))


def make_dallebart(folder: Path, rng: np.random.Generator):
    tokenizer = make_tokenizer(folder)
    config = DalleBartConfig(
        normalize_text=False,  # dalle-mini's normaliser downloads a word list; ids are compared anyway
        encoder_vocab_size=len(tokenizer), image_vocab_size=IMAGE_VOCAB, image_length=256,
        max_text_length=16, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=4, decoder_attention_heads=4, d_model=32, init_std=0.25,
        dropout=0.0, use_scan=True, gradient_checkpointing=False,
        # The published configs' special ids: start = image_vocab_size, pad = eos = one more.
        decoder_start_token_id=IMAGE_VOCAB, bos_token_id=IMAGE_VOCAB + 1, pad_token_id=IMAGE_VOCAB + 1,
        eos_token_id=IMAGE_VOCAB + 1,
    )
    model = DalleBart(config, seed=SEED, dtype=jnp.float32)
    params = unfreeze(randomise_norms_and_biases(model.params, rng))
    # The original may pick the start token as an image code (a random model often does; a
    # trained one never does); the playground never does. A zero lm_head column gives it a
    # score of 0, far below the best of 64 random scores, so both pick among codes alone.
    params["lm_head"]["kernel"][:, config.decoder_start_token_id] = 0.0
    model.params = freeze(params)
    model.save_pretrained(folder)
    # Everything below uses the files as saved, loaded back by the original code.
    return DalleBart.from_pretrained(str(folder), dtype=jnp.float32), DalleBartProcessor.from_pretrained(str(folder))


def greedy_margins(model, tokens, sequence, scale):
    """Per step, best minus second-best super-conditioned score along `sequence` (how clear-cut
    each greedy choice was: a tiny margin could flip on rounding differences)."""
    start = model.config.decoder_start_token_id
    inputs = np.concatenate([[start], sequence[:-1]])[None]
    rows = []
    for ids, mask in ((tokens["input_ids"], tokens["attention_mask"]),
                      (tokens["input_ids_uncond"], tokens["attention_mask_uncond"])):
        rows.append(np.asarray(model(input_ids=ids, attention_mask=mask, decoder_input_ids=inputs).logits[0]))
    cond, uncond = rows
    scores = np.sort(uncond + scale * (cond - uncond), axis=-1)
    return scores[:, -1] - scores[:, -2]


def dallebart_vectors(model, processor, rng: np.random.Generator):
    config = model.config
    tokens = processor(PROMPTS)
    ids = np.concatenate([np.asarray(tokens["input_ids"]), np.asarray(tokens["input_ids_uncond"][:1])])
    mask = np.concatenate([np.asarray(tokens["attention_mask"]), np.asarray(tokens["attention_mask_uncond"][:1])])
    vectors = {"input_ids": ids, "attention_mask": mask}
    # Rows: the two prompts, then the empty prompt (the unconditional row).
    vectors["encoder_states"] = np.asarray(model.encode(input_ids=ids, attention_mask=mask).last_hidden_state)

    # Teacher forcing: the start token then a fixed code sequence, for the first prompt and the empty one.
    codes = rng.integers(0, IMAGE_VOCAB, config.image_length, dtype=np.int32)
    decoder_ids = np.concatenate([[config.decoder_start_token_id], codes[:-1]]).astype(np.int32)
    vectors["teacher_codes"] = codes
    rows = [0, len(PROMPTS)]
    vectors["teacher_logits"] = np.asarray(model(
        input_ids=ids[rows], attention_mask=mask[rows],
        decoder_input_ids=np.repeat(decoder_ids[None], len(rows), axis=0)).logits)

    # dalle-mini's own generate: super-conditioning on logits, then top_k=1 (greedy).
    sequences, margins = [], []
    for p, prompt in enumerate(PROMPTS):
        one = {name: np.asarray(value)[p:p + 1] for name, value in tokens.items()}
        for scale in CONDITION_SCALES:
            out = model.generate(**one, prng_key=jax.random.PRNGKey(0), do_sample=True, top_k=1,
                                 condition_scale=scale)
            sequence = np.asarray(out.sequences[0, 1:], np.int32)  # without the start token
            # The playground never picks the start token (it is no VQGAN code); here it never won.
            assert sequence.max() < IMAGE_VOCAB, "the original picked the start token"
            sequences.append(sequence)
            margins.append(float(greedy_margins(model, one, sequence, scale).min()))
    vectors["greedy_sequences"] = np.stack(sequences).reshape(len(PROMPTS), len(CONDITION_SCALES), -1)
    return vectors, margins


def make_vqgan(folder: Path, rng: np.random.Generator) -> VQModel:
    # 16×16 codes as in the published f16 model, one upsampling level, few channels.
    config = VQGANConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                         z_channels=32, embed_dim=32, n_embed=IMAGE_VOCAB)
    model = VQModel(config, seed=SEED, dtype=jnp.float32)
    params = randomise_norms_and_biases(model.params, rng)
    # Centre the output on mid-grey so that most pixels fall inside [0, 1], not on the clip.
    params = unfreeze(params)
    params["decoder"]["conv_out"]["bias"] = params["decoder"]["conv_out"]["bias"] + 0.5
    model.params = freeze(params)
    model.save_pretrained(folder)
    return VQModel.from_pretrained(str(folder), dtype=jnp.float32)


def vqgan_vectors(model, rng: np.random.Generator):
    codes = rng.integers(0, IMAGE_VOCAB, (3, 256), dtype=np.int32)
    raw = np.asarray(model.decode_code(codes))
    # dalle-mini's inference pipeline clips the decoder output to [0, 1] pixels.
    pixels = raw.clip(0.0, 1.0)
    inside = float(((raw > 0) & (raw < 1)).mean())
    assert inside > 0.5, f"only {inside:.0%} of the pixels are inside (0, 1)"
    return {"vqgan_codes": codes, "vqgan_pixels": pixels}, inside


def main() -> None:
    import dalle_mini
    import flax
    import transformers

    rng = np.random.default_rng(SEED)
    if OUT.exists():
        shutil.rmtree(OUT)
    model_dir = OUT / "model"
    model_dir.mkdir(parents=True)
    dalle, processor = make_dallebart(model_dir, rng)
    vectors, margins = dallebart_vectors(dalle, processor, rng)
    vqgan = make_vqgan(model_dir / "vqgan", rng)
    vqgan_part, inside = vqgan_vectors(vqgan, rng)
    vectors.update(vqgan_part)
    np.savez_compressed(OUT / "vectors.npz", **vectors)

    inputs = {
        "prompts": PROMPTS,
        "condition_scales": CONDITION_SCALES,
        "rows": "encoder rows: the prompts, then the empty prompt; teacher_logits rows: prompt 0, empty prompt",
        "smallest_greedy_margin": min(margins),
        "vqgan_pixels_inside_0_1": inside,
        "made_with": {"dalle-mini": dalle_mini.__version__, "jax": jax.__version__, "flax": flax.__version__,
                      "transformers": transformers.__version__, "vqgan-jax": "10ef240f8ace869e437f3c32d14898f61512db12",
                      "python": sys.version.split()[0]},
    }
    (OUT / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
    for name, value in sorted(vectors.items()):
        print(f"{name:18s} {value.dtype} {value.shape}")
    print(f"smallest greedy margin {min(margins):.4f}; VQGAN pixels inside (0, 1): {inside:.0%}")


if __name__ == "__main__":
    main()
