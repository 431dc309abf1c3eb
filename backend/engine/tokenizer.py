"""Text tokenizer for DalleBart: BART's byte-level BPE, loaded from the official files.

`TextTokenizer.encode` gives what transformers' BartTokenizer gives with
``padding="max_length", truncation=True``: ``<s> tokens… </s>`` then ``<pad>``s, with the
tokens cut so that ``</s>`` always stays last.
"""
from __future__ import annotations

import json
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


def write_tokenizer(folder: Path, corpus: list[str], vocab_size: int) -> Path:
    """Train a byte-level BPE on `corpus` (normalised text) and write BART's five tokenizer files.

    Ids as in BART: <s>=0, <pad>=1, </s>=2, <unk>=3, and <mask> last. The vocabulary may come
    out smaller than `vocab_size` when the corpus has no more pairs to merge.
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
    base.train_from_iterator(corpus, trainer=trainer)
    base.model.save(str(folder))  # vocab.json + merges.txt, vocab.json rewritten below with <mask>
    tokenizer = _bart_tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    _write_json(folder / "vocab.json", dict(sorted(vocab.items(), key=lambda item: item[1])))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS, "pad_token": PAD,
               "cls_token": BOS, "mask_token": {"content": MASK, "lstrip": True, "normalized": False,
                                                "rstrip": False, "single_word": False}}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json",
                {**special, "add_prefix_space": False, "errors": "replace", "trim_offsets": True,
                 "model_max_length": 1024, "tokenizer_class": "BartTokenizer"})
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
