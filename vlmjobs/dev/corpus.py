"""The fixed text the local tokenizer is trained on (dev/build.py).

Fixed forever: changing it changes every tiny checkpoint's token ids. It covers
what the tiny model reads and writes (shape and colour phrases, digits, JSON
and Python-list punctuation, the task prompts, ChatML roles) plus everyday
English, so targets tokenize compactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from vlmjobs.vision import tasks

SIZE_WORDS = ["tiny", "small", "medium", "large", "big", "huge"]
COLOUR_WORDS = [
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "gray", "grey", "cyan", "magenta", "teal", "navy", "olive", "maroon", "gold", "silver",
    "beige", "violet", "lime", "dark", "light", "bright", "pale",
]  # fmt: skip
SHAPE_WORDS = [
    "square", "circle", "triangle", "rectangle", "ellipse", "oval", "star", "diamond",
    "pentagon", "hexagon", "cross", "ring", "line", "dot", "shape", "object", "box",
]  # fmt: skip
ENGLISH = """
the a an of and or in on at to from with without by for as is are was were be been
this that these those it its there here which who what where when how why not no yes
image picture photo scene background foreground left right top bottom middle center
above below under over near next beside behind front between corner edge side part
man woman person people child boy girl dog cat horse bird car bus truck bike bicycle
tree grass sky cloud water road street building house window door wall floor table
chair bench sign light pole fence shirt hat hair head hand arm leg face eye nose mouth
wearing holding sitting standing walking riding looking playing large small tall short
long wide narrow round flat striped plain wooden metal glass plastic stone brick paper
one two three four five six seven eight nine ten many several some all each every
describe locate find detect output return list label labels phrase phrases caption
coordinates coordinate bounding bbox bbox_2d box_2d point_2d format json JSON answer
object objects region regions item items field fields value values name text number
please following given provide short sentence word words information extract only
system user assistant helpful you are your
about after again against almost along already also although always among another
any anything around away back because before began begin being believe best better
big black blue body book both bring build business but call came can cannot care carry
case cause certain change city close cold come common company could country course
cut day did different do does done down draw during early earth east easy eat either
end enough even evening ever example fact fall family far fast father feel few field
fill final fire first fish follow food foot force form found free friend full game
gave general get give go good got great green ground group grow had half happen hard
has have he hear heard heat help her high him his hold home hot hour however hundred
idea if important inch include inside instead interest island just keep kind king knew
know land language last late later lay lead learn least leave less let life like line
little live look lost love low made main make many map mark may me mean measure men
might mile mind minute miss money month more morning most mother move much music must
my near need never new night north note nothing notice now off often old once only
open order other our out own page paint pair paper pass past pattern perhaps piece
place plan plane plant play point port position possible pound power present problem
produce product pull put question quick quite rain ran reach read ready real reason
record remember rest rich river rock room rule run said same saw say school science
sea second see seem self sentence set shall she ship shore should show simple since
sing size sleep slow snow so soft soil something sometimes song soon sound south space
speak special spell spring star start state stay step still stood stop story strong
study such summer sun sure surface table take talk teach tell than thank their them
then thing think thought thousand through time together told took toward town travel
true try turn under unit until up upon us use usual very voice vowel wait want war
warm watch way we weather week weight well went west while whole wind winter wish
within wonder wood work world would write wrong year young animal apple banana basket
bottle bowl bread cake camera candle carpet ceiling clock computer cup curtain desk
dish elephant flower fork giraffe glasses guitar jacket keyboard kitchen knife lamp
laptop leaf mirror motorcycle mountain orange pants pillow pizza plate refrigerator
sandwich shadow sheep shoe shelf sink skateboard ski snowboard sofa spoon surfboard
television tennis toilet towel train umbrella vase wheel zebra airplane backpack
handbag suitcase frisbee kite racket broccoli carrot donut couch remote phone oven
toaster scissors teddy bear drier toothbrush sidewalk parking meter hydrant traffic
"""


def _json_lines(rng: random.Random) -> Iterator[str]:
    """Targets like the tiny model learns: Qwen2.5-VL JSON lists and the seed's tuple lists."""
    for _ in range(600):
        items = []
        for _ in range(rng.randint(1, 5)):
            phrase = (
                f"a {rng.choice(SIZE_WORDS)} {rng.choice(COLOUR_WORDS)} {rng.choice(SHAPE_WORDS)}"
            )
            box = [rng.randint(0, 1400) for _ in range(4)]
            items.append((phrase, box))
        body = ",\n".join(f'\t{{"bbox_2d": {b}, "label": "{p}"}}' for p, b in items)
        yield f"```json\n[\n{body}\n]\n```"
        yield "[" + ", ".join(f"('{p}', {b})" for p, b in items) + "]"
        yield "\n".join(f"{','.join(map(str, b))} {p}" for p, b in items)


# The tasks whose prompts the tokenizer is trained on: a fixed list, not tasks.TASKS, so
# that adding a task does not reorder the BPE merges of every tiny tokenizer (and with
# them the ids, every fixture model's training and the demo model's weights: the `describe`
# task's prompt moved 7 merges and the demo's held-out F1 from 0.50 to 0.25).
CORPUS_TASKS = ("dense_caption", "detect", "ground", "extract_json", "caption", "custom")


def corpus() -> Iterator[str]:
    """Yield the corpus, one document at a time; identical on every call."""
    rng = random.Random(0)
    words = ENGLISH.split() + SIZE_WORDS + COLOUR_WORDS + SHAPE_WORDS
    for _ in range(40):
        yield " ".join(words)
        yield " ".join(w.capitalize() for w in words)
        rng.shuffle(words)
    for task in CORPUS_TASKS:
        yield tasks.prompt_for(
            task,
            labels=["circle", "red square"],
            phrase="the blue star",
            prompt="Describe the objects.",
        )
        yield f"<|im_start|>system\n{tasks.DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    yield from _json_lines(rng)
    yield "0 1 2 3 4 5 6 7 8 9 { } [ ] ( ) , . : ; ' \" ` - _ / \\ ! ? # % & * + = < > | ~ @ $ ^"
