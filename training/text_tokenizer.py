"""A byte-level BPE trained on the data set's captions, written as BART's tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from backend.engine.tokenizer import BOS, EOS, MASK, PAD, UNK, _bart_tokenizer


def write_tokenizer(folder: Path, corpus: list[str], vocab_size: int) -> None:
    """Train on `corpus` (normalised captions) and write the five official tokenizer files.

    Ids as in BART: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last.
    """
    folder.mkdir(parents=True, exist_ok=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[BOS, PAD, EOS, UNK],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.train_from_iterator(corpus, trainer=trainer)
    base.model.save(str(folder))
    tokenizer = _bart_tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)  # now with <mask>
    _write_json(folder / "vocab.json", dict(sorted(vocab.items(), key=lambda item: item[1])))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS, "pad_token": PAD,
               "cls_token": BOS, "mask_token": {"content": MASK, "lstrip": True, "normalized": False,
                                                "rstrip": False, "single_word": False}}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json",
                {**special, "add_prefix_space": False, "errors": "replace", "trim_offsets": True,
                 "model_max_length": 1024, "tokenizer_class": "BartTokenizer"})


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
