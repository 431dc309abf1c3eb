"""Text tokenizer for DalleBart: BART's byte-level BPE, loaded from the official files.

`TextTokenizer.encode` gives what transformers' BartTokenizer gives with
``padding="max_length", truncation=True``: ``<s> tokens… </s>`` then ``<pad>``s, with the
tokens cut so that ``</s>`` always stays last.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        _require_tokens(tokenizer.token_to_id, (BOS, PAD, EOS))
        # Padding and truncation happen in `encode`; settings saved in a tokenizer.json must not
        # apply a second time.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self.bos_id, self.pad_id, self.eos_id = (tokenizer.token_to_id(name) for name in (BOS, PAD, EOS))

    @classmethod
    def from_folder(cls, folder: Path) -> "TextTokenizer":
        """Load tokenizer.json, or else vocab.json + merges.txt, from a model folder."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        vocab, merges = folder / "vocab.json", folder / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            raise FileNotFoundError(f"{folder} has neither tokenizer.json nor vocab.json + merges.txt")
        return cls(_bart_tokenizer(models.BPE.from_file(str(vocab), str(merges))))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], max_length: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, both int32 [len(texts), max_length]."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a string")
        if max_length < 2:
            raise ValueError("max_length must leave room for <s> and </s>")
        input_ids = np.full((len(texts), max_length), self.pad_id, dtype=np.int32)
        attention_mask = np.zeros((len(texts), max_length), dtype=np.int32)
        # The BART framing is added here rather than by the file's post-processor, so the
        # result does not depend on how a given tokenizer.json configures it.
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for row, encoding in enumerate(encodings):
            ids = [self.bos_id, *encoding.ids[: max_length - 2], self.eos_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _bart_tokenizer(model: models.BPE) -> Tokenizer:
    """Wrap a BPE model the way BART's tokenizer.json does."""
    _require_tokens(model.token_to_id, (BOS, EOS))
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOS, model.token_to_id(EOS)), (BOS, model.token_to_id(BOS)),
        trim_offsets=True, add_prefix_space=False)
    tokenizer.add_special_tokens([BOS, PAD, EOS, UNK, AddedToken(MASK, lstrip=True, normalized=False)])
    return tokenizer


def _require_tokens(token_to_id, names: tuple[str, ...]) -> None:
    missing = [name for name in names if token_to_id(name) is None]
    if missing:
        raise ValueError(f"the tokenizer's vocabulary has no {', '.join(missing)} token")


# ---------------------------------------------------------------------------------------------
# A small tokenizer for tests and the "tiny" model, trained on captions generated in code.

_COLOURS = "red green blue yellow orange purple pink brown black white gray grey golden silver violet cyan".split()
_SHAPES = "cube sphere cone cylinder pyramid circle square triangle star heart ring disk ball box".split()
_OBJECTS = (
    "cat dog horse bird fish cow sheep rabbit fox bear lion tiger elephant monkey owl duck frog "
    "house car tree flower mountain river lake sea beach forest city street bridge castle tower "
    "boat train plane bicycle chair table lamp cup bottle book clock phone robot astronaut "
    "avocado armchair apple banana cake pizza sandwich moon sun sky cloud rainbow snow rain "
    "painting drawing photo sculpture portrait landscape garden window door road field desert "
    "dragon unicorn penguin giraffe zebra kangaroo dolphin whale octopus butterfly spider snake "
    "teapot kettle guitar piano violin drum umbrella hat shoe glove backpack computer keyboard "
    "rocket spaceship planet galaxy volcano island waterfall canyon lighthouse windmill temple "
    "pyramids skyscraper village farm kitchen bedroom library museum restaurant market station"
).split()
_ADJECTIVES = (
    "small big large tiny huge old new young happy sad bright dark shiny soft hard wooden "
    "metal glass plastic furry fluffy cute scary beautiful ugly realistic cartoon abstract "
    "futuristic ancient modern colorful vintage detailed simple sunny rainy snowy foggy"
).split()
_POSITIONS = (
    "on under above below behind beside near inside outside next to in front of on top of "
    "between around across along over through"
).split()
_COMMON = (
    "a an the of and with in at by for from to is are was it this that there their his her "
    "its one two three four five many some all every very made style art view night day "
    "sitting standing running flying swimming eating playing wearing holding looking reading "
    "drinking sleeping dancing singing jumping climbing walking driving riding painting cooking "
    "morning evening sunset sunrise winter summer spring autumn light shadow reflection water fire"
).split()
_STYLES = ["oil painting", "watercolor", "pixel art", "3d render", "pencil sketch", "photograph", "digital art"]


def _caption(rng: random.Random) -> str:
    def noun_phrase() -> str:
        words = [rng.choice(["a", "the", "two", "an old", "some"])]
        if rng.random() < 0.7:
            words.append(rng.choice(_COLOURS))
        if rng.random() < 0.5:
            words.append(rng.choice(_ADJECTIVES))
        words.append(rng.choice(_OBJECTS + _SHAPES))
        return " ".join(words)

    text = f"{noun_phrase()} {rng.choice(_POSITIONS)} {noun_phrase()}"
    if rng.random() < 0.5:
        text += f", {rng.choice(_STYLES)}"
    if rng.random() < 0.3:
        text += f" {' '.join(rng.sample(_COMMON, 3))}"
    if rng.random() < 0.1:
        text += f" in {rng.randint(1900, 2030)}"
    return " " + text  # the text normaliser starts every prompt with a space


def _training_corpus(lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = _COLOURS + _SHAPES + _OBJECTS + _ADJECTIVES + _POSITIONS + _COMMON
    vocabulary = [" " + " ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    return vocabulary + [_caption(rng) for _ in range(lines)]


def write_small_tokenizer(folder: Path, vocab_size: int = 1024) -> Path:
    """Train a byte-level BPE on generated captions and write BART's tokenizer files to `folder`.

    Special tokens: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask> as the last id. The vocabulary
    may come out smaller than `vocab_size` when the corpus has no more pairs to merge.
    """
    if vocab_size < 256 + 5:
        raise ValueError("vocab_size must hold the 256 byte symbols and the 5 special tokens")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # <mask> is added after training, as the last id
        special_tokens=[BOS, PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.train_from_iterator(_training_corpus(), trainer=trainer)

    base.model.save(str(folder))  # vocab.json + merges.txt, rewritten below with <mask>
    tokenizer = _bart_tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    (folder / "vocab.json").write_text(
        json.dumps(dict(sorted(vocab.items(), key=lambda item: item[1])), ensure_ascii=False), encoding="utf-8")

    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS,
               "pad_token": PAD, "cls_token": BOS,
               "mask_token": {"content": MASK, "lstrip": True, "normalized": False,
                              "rstrip": False, "single_word": False}}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {**special, "add_prefix_space": False, "errors": "replace", "trim_offsets": True,
              "model_max_length": 1024, "tokenizer_class": "BartTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
