"""BART byte-level BPE tokenizer: the small generated tokenizer and BartTokenizer's framing rules."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backend.engine.tiny_captions import write_small_tokenizer
from backend.engine.tokenizer import TextTokenizer

OFFICIAL_FILES = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_small_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def tokenizer(folder):
    return TextTokenizer.from_folder(folder)


def _content_ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    """Token ids of `text` between <s> and </s>, without truncation."""
    ids, mask = tokenizer.encode([text], max_length=1024)
    return ids[0, 1:mask[0].sum() - 1].tolist()


def test_writes_the_official_files_with_bart_special_tokens(folder, tokenizer):
    assert OFFICIAL_FILES <= {path.name for path in folder.iterdir()}
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == max(vocab.values()) == 1023
    assert tokenizer.vocab_size == len(vocab) == 1024
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version")
    special = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special["pad_token"] == "<pad>" and special["mask_token"]["content"] == "<mask>"


def test_same_arguments_write_identical_files(folder, tmp_path):
    again = write_small_tokenizer(tmp_path / "again")
    for name in OFFICIAL_FILES:
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name


def test_vocab_size_argument_sets_the_size(tmp_path):
    assert TextTokenizer.from_folder(write_small_tokenizer(tmp_path, vocab_size=400)).vocab_size == 400
    with pytest.raises(ValueError):
        write_small_tokenizer(tmp_path / "too-small", vocab_size=100)


def test_encode_frames_pads_and_masks_like_bart(tokenizer):
    ids, mask = tokenizer.encode([" a red cube on top of a blue sphere", ""], max_length=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == np.int32
    # Frequent corpus words are whole tokens: <s> + 9 words + </s>, then padding.
    assert ids[0, 0] == 0 and ids[0, 10] == 2 and (ids[0, 11:] == 1).all()
    assert mask[0].tolist() == [1] * 11 + [0] * 5
    # The empty prompt is the unconditional input of super-conditioning.
    assert ids[1].tolist() == [0, 2] + [1] * 14
    assert mask[1].tolist() == [1, 1] + [0] * 14


def test_truncation_keeps_the_end_token_last(tokenizer):
    text = " a green cat" * 40
    full = _content_ids(tokenizer, text)
    assert len(full) > 64
    ids, mask = tokenizer.encode([text], max_length=64)
    assert ids[0].tolist() == [0] + full[:62] + [2]
    assert mask.sum() == 64


def test_decode_round_trips_any_text(tokenizer):
    # Byte-level BPE: words outside the corpus, other scripts and emojis all survive.
    for text in [" a red cube on top of a blue sphere", " xylophone quartz", " Чайник в форме авокадо 🥑", ""]:
        ids, _ = tokenizer.encode([text])
        assert tokenizer.decode(ids[0]) == text


def test_vocab_and_merges_alone_give_the_same_ids(folder, tokenizer, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(folder / name, tmp_path / name)
    from_bpe_files = TextTokenizer.from_folder(tmp_path)
    texts = [" a red cube", " Чайник 🥑 <mask> x", "no leading space, 1920", ""]
    for a, b in zip(tokenizer.encode(texts, 24), from_bpe_files.encode(texts, 24)):
        np.testing.assert_array_equal(a, b)
    assert from_bpe_files.vocab_size == tokenizer.vocab_size


def test_bad_input_is_rejected(tokenizer, tmp_path):
    with pytest.raises(TypeError):
        tokenizer.encode(" a red cube")
    with pytest.raises(ValueError):
        tokenizer.encode(["x"], max_length=1)
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no <s>, </s> token"):
        TextTokenizer.from_folder(tmp_path)


def test_padding_saved_in_tokenizer_json_is_not_applied_twice(folder, tokenizer, tmp_path):
    settings = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    settings["padding"] = {"strategy": {"Fixed": 100}, "direction": "Right", "pad_to_multiple_of": None,
                           "pad_id": 1, "pad_type_id": 0, "pad_token": "<pad>"}
    settings["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(settings), encoding="utf-8")
    texts = [" a red cube on top of a blue sphere"]
    for a, b in zip(tokenizer.encode(texts, 16), TextTokenizer.from_folder(tmp_path).encode(texts, 16)):
        np.testing.assert_array_equal(a, b)
