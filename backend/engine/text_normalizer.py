"""Prompt normalisation as DALL·E Mini was trained with (dalle_mini/model/text.py).

The models saw captions cleaned by these exact rules, so prompts go through the same steps:
fix mojibake, spell out emojis, transliterate to ASCII, lower-case, drop URLs and HTML, turn
punctuation into commas (keeping dots in numbers, dates and 's-style apostrophes), split
"#hashtags" into words, and collapse repeats. The result always starts with a space.
"""
from __future__ import annotations

import html
import math
import random
import re
from pathlib import Path

import emoji
import ftfy
from unidecode import unidecode

# Stand-in for characters that must survive the punctuation step; made of letters so that no
# rule in between touches it.
_TEMP = "xtokx"
_DOT, _QUOTE, _SLASH = f"{_TEMP}dot{_TEMP}", f"{_TEMP}quote{_TEMP}", f"{_TEMP}slash{_TEMP}"

# "<person>" placeholders of the CC12M captions, replaced as often as each phrase occurs in Wikipedia.
_PERSON_PHRASES = ("a person", "someone", "somebody")
_PERSON_WEIGHTS = (282265, 121194, 12219)

_RE_PEOPLE = re.compile(r"<person>([,\s]*(and)*[,\s]*<person>)+")
_RE_WIKI_REF_START = re.compile(r"\A\s*\[\d+\]")
_RE_WIKI_REF_END = re.compile(r"\[\d+\]\s*\Z")
_RE_HTML_TAG = re.compile(r"<[^<]+?>")
_RE_URL = re.compile(r"http\S+")
_RE_THOUSANDS = re.compile(r"(\d),(\d{3})")
_RE_INNER_DOT = re.compile(r"(\w)\.(\w)")
_RE_CONTRACTION = re.compile(r"'(?=([stdm]|(ll)|(re)|(ve))\b)")
_RE_DATE_SLASH = re.compile(r"(\d)/(\d)")
_RE_WORD_DASH = re.compile(r"(\w)-(\w)")
_RE_SPACED_SYMBOL = re.compile(r"([%&/$*])")
_RE_HASHTAG = re.compile(r"#(\w+)")
_RE_IGNORED = re.compile(r"[_#\\]")
_RE_QUOTE = re.compile(r"['\"`]")
_RE_PUNCTUATION = re.compile(r"[()\[\].,|:;?!=+~\-/{}]")
_RE_REPEATS = re.compile(r"(\D)(\1{3,})")  # 4+ only: roman numerals like "viii" keep 3
_RE_QUOTES_RUN = re.compile(r'(\s*"+\s*)+')
_RE_COMMAS_RUN = re.compile(r"(\s*,+\s*)+")
_RE_SPACES = re.compile(r"\s+")


class HashtagSplitter:
    """Splits "redcar" into "red car" by the cheapest sequence of words, a word costing
    log(1 + its rank) in a frequency-ordered word list (one word first on each line)."""

    _PARTS = re.compile(r"[^a-zA-Z0-9']+")

    def __init__(self, word_frequencies_path: Path):
        self._word_cost: dict[str, float] = {}
        rank = 0
        with open(word_frequencies_path, encoding="utf-8") as lines:
            for line in lines:
                fields = line.split()
                if fields:
                    self._word_cost[fields[0]] = math.log(rank + 1)
                    rank += 1
        if not self._word_cost:
            raise ValueError(f"{word_frequencies_path} lists no words")
        self._max_word = max(len(word) for word in self._word_cost)

    def __call__(self, text: str) -> str:
        return " ".join(word for part in self._PARTS.split(text) for word in self._split(part))

    def _best_match(self, text: str, end: int, costs: list[float]) -> tuple[float, int]:
        """(cost, length) of the cheapest split of text[:end] whose last word ends at `end`;
        equal costs prefer the shorter last word."""
        return min(
            (costs[end - length] + self._word_cost.get(text[end - length:end].lower(), math.inf), length)
            for length in range(1, min(end, self._max_word) + 1)
        )

    def _split(self, text: str) -> list[str]:
        costs = [0.0]
        lengths = [0]
        for end in range(1, len(text) + 1):
            cost, length = self._best_match(text, end, costs)
            costs.append(cost)
            lengths.append(length)
        words: list[str] = []
        end = len(text)
        while end > 0:
            word = text[end - lengths[end]:end]
            # Glue "'s" back to its word and digits back to digits, as the reference does.
            if words and word != "'" and (words[-1] == "'s" or (word[-1].isdigit() and words[-1][0].isdigit())):
                words[-1] = word + words[-1]
            else:
                words.append(word)
            end -= lengths[end]
        return words[::-1]


class TextNormalizer:
    def __init__(self, word_frequencies_path: Path | None = None):
        # Without the word list, hashtags only lose their "#".
        self._split_hashtag = HashtagSplitter(word_frequencies_path) if word_frequencies_path else None

    def normalize(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        t = ftfy.fix_text(text)
        t = html.unescape(html.unescape(t))
        t = emoji.demojize(t)  # before unidecode, which would drop emojis
        t = unidecode(t).lower()
        t = _replace_person_tokens(t)
        t = _RE_WIKI_REF_END.sub("", _RE_WIKI_REF_START.sub("", t))
        t = _RE_HTML_TAG.sub(" ", t)
        t = _RE_URL.sub("", t)
        t = _RE_THOUSANDS.sub(r"\1\2", _RE_THOUSANDS.sub(r"\1\2", t))  # twice: "1,000,000"
        # Protect dots, apostrophes and slashes that are not punctuation.
        t = _RE_INNER_DOT.sub(rf"\1{_DOT}\2", t)
        t = _RE_CONTRACTION.sub(_QUOTE, t)
        t = _RE_DATE_SLASH.sub(rf"\1{_SLASH}\2", t)
        t = _RE_WORD_DASH.sub(r"\1 \2", t)
        t = _RE_SPACED_SYMBOL.sub(r" \1 ", t)
        if self._split_hashtag:
            t = _RE_HASHTAG.sub(lambda match: self._split_hashtag(match.group(1)), t)
        t = _RE_IGNORED.sub(" ", t)
        t = _RE_QUOTE.sub(' " ', t)
        t = _RE_PUNCTUATION.sub(",", t)
        t = t.replace(_DOT, ".").replace(_QUOTE, "'").replace(_SLASH, "/")
        t = _RE_REPEATS.sub(r"\1", t)
        t = _RE_QUOTES_RUN.sub(' " ', t)
        t = _RE_COMMAS_RUN.sub(", ", t)
        t = _RE_SPACES.sub(" ", t)
        return " " + _strip_edge_commas(t)


def _replace_person_tokens(text: str) -> str:
    text = _RE_PEOPLE.sub(" people ", text)
    if "<person>" not in text:
        return text
    # Seeded by the text so that a prompt always normalises the same way.
    rng = random.Random(text)
    while "<person>" in text:
        phrase = rng.choices(_PERSON_PHRASES, weights=_PERSON_WEIGHTS)[0]
        text = text.replace("<person>", f" {phrase} ", 1)
    return text


def _strip_edge_commas(text: str) -> str:
    text = text.strip()
    if text.endswith(","):
        text = text[:-1]
    if text.startswith(","):
        text = text[1:]
    return text.strip()
