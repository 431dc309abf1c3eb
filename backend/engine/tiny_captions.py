"""The tiny test model's text: captions generated in code, and the small tokenizer trained on
them (for tests, benchmarks and the `tiny` model; the demo model has its own, from training)."""
from __future__ import annotations

import random
from pathlib import Path

from .tokenizer import write_tokenizer

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
    """A byte-level BPE trained on the generated captions, as BART's tokenizer files."""
    return write_tokenizer(folder, _training_corpus(), vocab_size)
