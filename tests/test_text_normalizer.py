"""Prompt normalisation: examples worked out from the rules of dalle_mini/model/text.py."""
from __future__ import annotations

import pytest

from backend.engine.text_normalizer import TextNormalizer

WORD_FREQUENCIES = """\
the 100
a 90
of 80
red 70
car 60
i 55
love 50
new 45
york 40
s 35
it 30
's 29
cat 28
cats 27
dog 26
2022 25
sun 23
set 22
sunset 21
beach 20
"""


@pytest.fixture(scope="module")
def plain():
    return TextNormalizer()


@pytest.fixture(scope="module")
def with_words(tmp_path_factory):
    path = tmp_path_factory.mktemp("words") / "enwiki-words-frequency.txt"
    path.write_text(WORD_FREQUENCIES, encoding="utf-8")
    return TextNormalizer(path)


@pytest.mark.parametrize("text, expected", [
    ("", " "),
    ("Hello World!", " hello world"),
    ("A cat's toy, isn't it?", " a cat's toy, isn't it"),
    ("it'll we're they've I'm he'd 'quoted'", ' it\'ll we\'re they\'ve i\'m he\'d " quoted "'),
    ("1,000,000 dots 3.14 and 12/25/2022", " 1000000 dots 3.14 and 12/25/2022"),
    ("a.b.c", " a.b, c"),
    ("café – naïve “quotes” ‘single’", ' cafe, naive " quotes " single "'),
    ("mojibake: cafÃ©", " mojibake, cafe"),
    ("&amp;lt;3", " <3"),
    ("I ❤️ pizza 🍕", " i, red heart, pizza, pizza"),
    ("<b>bold</b> http://example.com/x?y=1 text", " bold text"),
    ("[12] wiki ref [3]", " wiki ref"),
    ("well-known self-driving car", " well known self driving car"),
    ("50% & $5 * 2", " 50 % & $ 5 * 2"),
    ("soooooo goooood!!!!", " so god"),
    ("VIII viiii", " viii vi"),
    ("  ,leading, and trailing,  ", " leading, and trailing"),
    ("tab\tnew\nline", " tab new line"),
    ("under_score back\\slash", " under score back slash"),
    ("x -- y", " x, y"),
    ("(parens) [brackets] {braces} a|b a:b a=b a+b a~b", " parens, brackets, braces, a, b a, b a, b a, b a, b"),
    ('"""multiple""" quotes``', ' " multiple " quotes "'),
    ("#ILoveNewYork", " ilovenewyork"),  # no word list: the "#" only goes
])
def test_examples(plain, text, expected):
    assert plain.normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("#ILoveNewYork at #sunset2022", " i love new york at sunset 2022"),
    ("#redcar #2022cats #cat2022", " red car 2022 cats cat 2022"),
    ("#the_cat", " the cat"),  # "_" separates words inside a hashtag
    ("#qq", " q q"),  # unknown letters cost infinity: the shortest pieces win
    ("no hashtag: redcar", " no hashtag, redcar"),
])
def test_hashtags_split_by_word_frequency(with_words, text, expected):
    assert with_words.normalize(text) == expected


def test_person_placeholders_become_people_deterministically(plain):
    assert plain.normalize("<person> and <person> at the beach") == " people at the beach"
    single = plain.normalize("<person> on a horse")
    assert single in {" a person on a horse", " someone on a horse", " somebody on a horse"}
    assert all(plain.normalize("<person> on a horse") == single for _ in range(5))


def test_bad_input_is_rejected(plain, tmp_path):
    with pytest.raises(TypeError):
        plain.normalize(None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError):
        TextNormalizer(empty)
    with pytest.raises(FileNotFoundError):
        TextNormalizer(tmp_path / "missing.txt")
