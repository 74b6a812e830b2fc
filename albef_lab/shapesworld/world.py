"""ShapesWorld: procedural scenes with exact ground truth, and the language of every ALBEF task.

A scene holds 1-5 objects (shape, colour, size, box) that never overlap, on a lightly textured
background. Everything said about a scene (captions, VQA, NLVR2 statements, SNLI-VE hypotheses,
referring expressions) is derived from its scene graph, so it is true (or false where meant) by
construction. Colour+shape pairs are unique within a scene, which keeps every phrase unambiguous.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon"]
PLURAL = {s: s + ("es" if s.endswith("ss") or s.endswith("x") else "s") for s in SHAPES}
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 215, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "cyan": (40, 205, 215), "white": (245, 245, 245),
}
SIZES = {"small": (0.16, 0.2), "large": (0.27, 0.33)}  # side as a fraction of the image
NUMBERS = ["zero", "one", "two", "three", "four", "five"]
RELATIONS = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}
MIN_GAP = 0.12  # centres must differ by this much (fraction of the image) for a relation to be stated
# Words of the first SNLI-VE neutral templates: no longer generated (text alone gave the label away), but kept
# in the vocabulary so that token ids, and checkpoints trained on them, stay valid.
NEUTRAL = ["the {o} was drawn by a child", "the {o} is made of wood", "the {o} is about to move",
           "someone painted the {o} yesterday", "the {o} is heavier than it looks", "the {o} smells of paint"]
VE_LABELS = ["contradiction", "neutral", "entailment"]  # ids 0, 1, 2 as the original's ve_dataset
NOISE_KINDS = ["absent", "swap", "unrelated"]
# what a caption can say; the specific ones, true of few scenes, are listings and relations (docs/itm_recipe.md)
CAPTION_KINDS = ("listing", "count", "single", "relation")


@dataclass
class Obj:
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"

    def pixel_box(self, res: int) -> list[float]:
        """[x, y, w, h] in pixels at resolution `res` (COCO convention)."""
        x0, y0, x1, y1 = (v * res for v in self.box)
        return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


@dataclass
class Scene:
    index: int
    seed: int
    objects: list[Obj] = field(default_factory=list)
    background: tuple[int, int, int] = (120, 120, 120)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Scene:
        objs = [Obj(o["shape"], o["colour"], o["size"], tuple(o["box"])) for o in d["objects"]]
        return Scene(d["index"], d["seed"], objs, tuple(d["background"]))

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum((shape is None or o.shape == shape) and (colour is None or o.colour == colour)
                   for o in self.objects)

    def has(self, colour: str, shape: str) -> bool:
        return self.count(shape, colour) > 0

    def mirrored(self) -> Scene:
        """The scene flipped left to right (what a horizontal-flip augmentation shows)."""
        objs = [Obj(o.shape, o.colour, o.size, (round(1 - o.box[2], 4), o.box[1], round(1 - o.box[0], 4), o.box[3]))
                for o in self.objects]
        return Scene(self.index, self.seed, objs, self.background)


def relation_holds(a: Obj, b: Obj, rel: str) -> bool:
    axis, sign = RELATIONS[rel]
    d = a.centre[axis] - b.centre[axis]
    return d * sign > MIN_GAP


def _overlaps(a: tuple, b: tuple, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(index: int, seed: int) -> Scene:
    """Deterministic in (seed, index): 1-5 non-overlapping objects with unique colour+shape."""
    rng = random.Random(seed * 1_000_003 + index)
    bg = tuple(int(v) for v in (rng.randint(95, 140), rng.randint(95, 140), rng.randint(95, 140)))
    for n in range(rng.randint(1, 5), 0, -1):
        objs: list[Obj] = []
        pairs = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n)
        for shape, colour in pairs:
            size = rng.choice(list(SIZES))
            for _ in range(60):
                side = rng.uniform(*SIZES[size])
                x0, y0 = rng.uniform(0.02, 0.98 - side), rng.uniform(0.02, 0.98 - side)
                box = (x0, y0, x0 + side, y0 + side)
                if not any(_overlaps(box, o.box, 0.02) for o in objs):
                    objs.append(Obj(shape, colour, size, tuple(round(v, 4) for v in box)))
                    break
            else:
                break
        if len(objs) == n:
            return Scene(index, seed, objs, bg)
    raise RuntimeError("could not place a single object")  # unreachable: one object always fits


def _shape_points(shape: str, box: tuple[float, ...]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2

    def polar(k: int, radius: list[float], turn: float = -math.pi / 2) -> list[tuple[float, float]]:
        return [(cx + radius[i % len(radius)] * math.cos(turn + 2 * math.pi * i / k),
                 cy + radius[i % len(radius)] * math.sin(turn + 2 * math.pi * i / k)) for i in range(k)]

    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        return polar(10, [r, r * 0.45])
    if shape == "hexagon":
        return polar(6, [r], 0.0)
    if shape == "cross":
        t = r / 3
        return [(cx - t, y0), (cx + t, y0), (cx + t, cy - t), (x1, cy - t), (x1, cy + t), (cx + t, cy + t),
                (cx + t, y1), (cx - t, y1), (cx - t, cy + t), (x0, cy + t), (x0, cy - t), (cx - t, cy - t)]
    raise ValueError(shape)


def render(scene: Scene, res: int = 64) -> Image.Image:
    """Draw the scene at `res` x `res` pixels (supersampled for clean edges)."""
    ss = 4 if res <= 128 else 2
    size = res * ss
    rng = np.random.default_rng(scene.seed * 7919 + scene.index)
    base = np.array(scene.background, dtype=np.float32)
    coarse = rng.normal(0, 10, (8, 8, 1)).astype(np.float32)
    texture = np.array(Image.fromarray(coarse[..., 0]).resize((res, res), Image.BICUBIC))[..., None]
    noise = rng.normal(0, 4, (res, res, 1)).astype(np.float32)
    bg = np.clip(base + texture + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        box = tuple(v * size for v in o.box)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_shape_points(o.shape, box), fill=fill)
    return img.resize((res, res), Image.LANCZOS)


# --- language -----------------------------------------------------------------------------------

def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _number(n: int) -> str:
    return NUMBERS[n] if n < len(NUMBERS) else str(n)


def _noun(shape: str, n: int) -> str:
    return shape if n == 1 else PLURAL[shape]


def relations(scene: Scene) -> list[tuple[Obj, str, Obj]]:
    return [(a, rel, b) for a in scene.objects for b in scene.objects if a is not b
            for rel in RELATIONS if relation_holds(a, b, rel)]


def caption(scene: Scene, rng: random.Random, kinds: Collection[str] = CAPTION_KINDS) -> str:
    """One true caption; the kind is drawn at random among `kinds` (a listing where none of them fits the scene:
    a relation needs two objects apart)."""
    objs = scene.objects
    drawn = [k for k in ["listing", "count", "single"] + (["relation"] * 2 if relations(scene) else []) if k in kinds]
    kind = rng.choice(drawn) if drawn else "listing"
    if kind == "relation":
        a, rel, b = rng.choice(relations(scene))
        return f"{_with_article(a.phrase(rng.random() < 0.5))} {rel} {_with_article(b.phrase(rng.random() < 0.5))}"
    if kind == "count":
        n = len(objs)
        choice = rng.random()
        shape = rng.choice(objs).shape
        k = scene.count(shape=shape)
        if choice < 0.4 or k == n:
            return f"{_number(n)} {'shape' if n == 1 else 'shapes'}"
        return f"{_number(k)} {_noun(shape, k)} and {_number(n - k)} other {'shape' if n - k == 1 else 'shapes'}"
    if kind == "single":
        o = rng.choice(objs)
        return f"there is {_with_article(o.phrase(rng.random() < 0.5))}"
    shown = rng.sample(objs, min(len(objs), 3))
    parts = [_with_article(o.phrase(rng.random() < 0.5)) for o in shown]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: Scene, rng: random.Random, n: int, kinds: Collection[str] = CAPTION_KINDS) -> list[str]:
    out: list[str] = []
    for _ in range(n * 6):
        c = caption(scene, rng, kinds)
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    while len(out) < n:
        out.append(caption(scene, rng, kinds))
    return out


def _match_phrase(words: list[str]) -> tuple[str | None, str, str]:
    """'[size] colour shape' (an article already dropped) -> (size or None, colour, shape)."""
    if len(words) == 3 and words[0] in SIZES:
        return words[0], words[1], words[2]
    if len(words) == 2:
        return None, words[0], words[1]
    raise ValueError(f"not an object phrase of ShapesWorld: {' '.join(words)!r}")


def _objects_matching(scene: Scene, phrase: tuple[str | None, str, str]) -> list[Obj]:
    size, colour, shape = phrase
    return [o for o in scene.objects if o.colour == colour and o.shape == shape and size in (None, o.size)]


def _drop_article(words: list[str]) -> list[str]:
    return words[1:] if words and words[0] in ("a", "an") else words


def caption_holds(scene: Scene, text: str) -> bool:
    """Whether a caption of ShapesWorld's language (`caption`, `corrupt_caption`) is true of `scene`.

    Accepts the text before or after `pre_caption` (commas and case do not matter). Used to find
    false negatives: a 'negative' pair whose caption is in fact true of the image.
    """
    return _caption_test(text)(scene)


@functools.lru_cache(maxsize=65536)
def _caption_test(text: str) -> Callable[[Scene], bool]:
    """Parse a caption once into a test of scenes (captions repeat across batches and evaluations)."""
    words = text.lower().replace(",", " ").split()
    if not words:
        raise ValueError("an empty caption is neither true nor false")
    if words[:2] == ["there", "is"]:  # single object, and the corrupted captions
        phrase = _match_phrase(_drop_article(words[2:]))
        return lambda sc: bool(_objects_matching(sc, phrase))
    if words[0] in NUMBERS:  # counts: 'three shapes', 'two circles and one other shape'
        k = NUMBERS.index(words[0])
        if len(words) == 2:
            return lambda sc: len(sc.objects) == k
        shape = next((s for s in SHAPES if words[1] in (s, PLURAL[s])), None)
        if shape is None or len(words) < 4 or words[3] not in NUMBERS:
            raise ValueError(f"not a count caption of ShapesWorld: {text!r}")
        m = NUMBERS.index(words[3])
        return lambda sc: sc.count(shape=shape) == k and len(sc.objects) - k == m
    joined = " ".join(words)
    for rel in RELATIONS:  # 'a red circle to the left of a large blue square'
        if f" {rel} " in joined:
            left, right = joined.split(f" {rel} ", 1)
            a_phrase = _match_phrase(_drop_article(left.split()))
            b_phrase = _match_phrase(_drop_article(right.split()))
            return lambda sc: any(relation_holds(a, b, rel) for a in _objects_matching(sc, a_phrase)
                                  for b in _objects_matching(sc, b_phrase) if a is not b)
    # a listing: 'a red circle, a small blue square and a green star'
    parts, current = [], []
    for w in words + ["and"]:
        if w == "and" or (w in ("a", "an") and current):
            if current:
                parts.append(_match_phrase(_drop_article(current)))
            current = [] if w == "and" else [w]
        else:
            current.append(w)
    return lambda sc: all(_objects_matching(sc, p) for p in parts)


def caption_kind(text: str) -> str:
    """The form of a caption of ShapesWorld's language: 'count', 'single', 'relation' or 'listing'."""
    words = text.lower().replace(",", " ").split()
    if words and words[0] in NUMBERS:
        return "count"
    if words[:2] == ["there", "is"]:
        return "single"
    joined = f" {' '.join(words)} "
    return "relation" if any(f" {rel} " in joined for rel in RELATIONS) else "listing"


def _fix_articles(words: list[str]) -> list[str]:
    return [("an" if nxt[0] in "aeiou" else "a") if w in ("a", "an") else w
            for w, nxt in zip(words, words[1:] + ["x"], strict=True)]


def _plausible(words: list[str]) -> bool:
    """A caption the generator could have written of some scene: the objects it names are distinct
    (colour+shape pairs are unique in a scene) and a count adds up to at most 5 objects, each part at least 1."""
    pairs = [(a, b) for a, b in zip(words, words[1:], strict=False) if a in COLOURS and b in SHAPES]
    if len(pairs) != len(set(pairs)):
        return False
    counts = [NUMBERS.index(w) for w in words if w in NUMBERS]
    return all(c >= 1 for c in counts) and sum(counts) <= 5


EDIT_KINDS = {"colour": list(COLOURS), "shape": SHAPES + [PLURAL[s] for s in SHAPES], "size": list(SIZES),
              "direction": ["left", "right", "above", "below"], "count": NUMBERS[2:]}
EDIT_KIND_NAMES = (*EDIT_KINDS, "binding")  # every kind `caption_edits` makes
_SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above"}


def caption_edits(text: str, shown: list[Scene], kinds: Collection[str] = ()) -> dict[str, list[str]]:
    """One-word edits of `text` that are false of each scene in `shown`, by kind: hard ITM negatives.

    An edit puts another colour, shape, size, direction ('left' for 'right') or count in place of one, or swaps
    two colours (or two shapes) of the caption between their objects ('binding': which object has which colour,
    what a bag of words cannot tell). Every edit stays a caption the generator could have written
    (`_plausible`), so its words alone do not mark it false. `shown`: the scenes the image may show (the scene,
    and its mirror image when a flip may have happened and the caption holds of both). `kinds`: only these
    (empty: every kind; the truth checks, the costly part, run for those only). Deterministic order.
    """
    words = text.lower().replace(",", " ").split()
    edits: dict[str, dict[str, None]] = {k: {} for k in EDIT_KIND_NAMES}  # ordered sets
    for i, w in enumerate(words):
        for kind, pool in EDIT_KINDS.items():
            if w not in pool or w == "one":  # 'one' keeps its noun singular: no other count fits it
                continue
            if kind == "direction":
                pool = [_SWAPS[w]]
            elif kind == "shape":  # a plural stays plural
                pool = [PLURAL[s] for s in SHAPES] if w in PLURAL.values() else SHAPES
            for o in pool:
                if o != w:
                    edits[kind][" ".join(_fix_articles(words[:i] + [o] + words[i + 1:]))] = None
    for pool in (list(COLOURS), SHAPES, list(PLURAL.values())):
        at = [i for i, w in enumerate(words) if w in pool]
        for a, i in enumerate(at):
            for j in at[a + 1:]:
                if words[i] != words[j]:
                    swapped = list(words)
                    swapped[i], swapped[j] = words[j], words[i]
                    edits["binding"][" ".join(_fix_articles(swapped))] = None
    keep = {k: [e for e in v if _plausible(e.split()) and not any(caption_holds(sc, e) for sc in shown)]
            for k, v in edits.items() if not kinds or k in kinds}
    return {k: v for k, v in keep.items() if v}


def choose_edit(edits: dict[str, list[str]], u: float) -> str | None:
    """One edit for a uniform draw `u` in [0, 1): a kind uniformly, then an edit of that kind uniformly (colour
    edits outnumber the others sevenfold; the rarer kinds are the harder ones)."""
    if not edits:
        return None
    kinds = list(edits)
    k = min(int(u * len(kinds)), len(kinds) - 1)
    options = edits[kinds[k]]
    return options[min(int((u * len(kinds) - k) * len(options)), len(options) - 1)]


def _absent_pair(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A (shape, colour) the scene does not hold, drawn uniformly."""
    present = {(o.shape, o.colour) for o in scene.objects}
    return rng.choice([(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present])


def corrupt_caption(scene: Scene, other: Scene, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """A caption that is wrong the way web alt-text is: an absent object, a swapped attribute, unrelated."""
    kind = kind or rng.choice(NOISE_KINDS)
    if kind == "absent":
        shape, colour = _absent_pair(scene, rng)
        fake = Obj(shape, colour, rng.choice(list(SIZES)), (0, 0, 0, 0))
        return f"there is {_with_article(fake.phrase(False))}", kind
    if kind == "swap":
        o = rng.choice(scene.objects)
        others = [c for c in COLOURS if c != o.colour and not scene.has(c, o.shape)]
        wrong = Obj(o.shape, rng.choice(others), o.size, o.box)
        return f"there is {_with_article(wrong.phrase(rng.random() < 0.5))}", kind
    return caption(other, rng), "unrelated"


# Web alt-text is mostly partly right: a true caption with a false clause, one attribute wrong, only a minor object
# named, or another image's caption (the paper's ice-cream seller too small to see)
WEB_NOISE_KINDS = ["extra", "attribute", "minor", "other"]
_PHRASE_WORDS = set(SIZES) | set(COLOURS) | set(SHAPES)


def phrase_spans(words: list[str]) -> list[tuple[int, int]]:
    """[start, end) of each object phrase ('a [size] colour shape') in a caption's words, the article left out."""
    spans, start = [], None
    for i, w in enumerate([*words, "."]):
        if w in _PHRASE_WORDS:
            start = i if start is None else start
        elif start is not None:
            spans.append((start, i))
            start = None
    return spans


def _names_an_object(scene: Scene, words: list[str]) -> bool:
    return bool(_objects_matching(scene, _match_phrase(words)))


def web_noise(scene: Scene, other: Scene, rng: random.Random, kind: str | None = None) -> tuple[str, str, list]:
    """A partly right caption of `scene` (a kind of `WEB_NOISE_KINDS`) and its false words: [[index, the scene's
    word there or None], ...], indexing the caption's words with commas dropped. A word is false when the object
    phrase it is in names no object of the scene (or, for a direction, when no named pair stands that way)."""
    kind = kind or rng.choice(WEB_NOISE_KINDS)
    objs = scene.objects
    if kind == "minor":  # every word true, the main object missing
        if any(o.size == "large" for o in objs) and any(o.size == "small" for o in objs):
            o = rng.choice([o for o in objs if o.size == "small"])
            return f"there is {_with_article(o.phrase())}", kind, []
        kind = "attribute"
    if kind == "attribute":
        text = caption(scene, rng, ("listing", "single", "relation"))
        words = text.replace(",", "").split()
        edits = []
        for a, b in phrase_spans(words):
            for i in range(a, b):
                pool = COLOURS if words[i] in COLOURS else SHAPES if words[i] in SHAPES else ()
                for alt in pool:
                    edited = words[:i] + [alt] + words[i + 1:]
                    if alt != words[i] and _plausible(edited) and not _names_an_object(scene, edited[a:b]):
                        edits.append((i, alt))
        if edits:
            i, alt = rng.choice(edits)
            edited = _fix_articles(words[:i] + [alt] + words[i + 1:])  # 'a red' -> 'an orange'
            tokens = [w + ("," if t.endswith(",") else "") for w, t in zip(edited, text.split(), strict=True)]
            return " ".join(tokens), kind, [[i, words[i]]]
        kind = "extra"
    if kind == "extra":  # a true listing and a false clause
        shown = rng.sample(objs, min(len(objs), 2))
        shape, colour = _absent_pair(scene, rng)
        parts = [_with_article(o.phrase(rng.random() < 0.5)) for o in shown]
        text = ", ".join(parts) + f" and {_with_article(colour)} {shape}"
        n = len(text.replace(",", "").split())
        return text, kind, [[n - 2, None], [n - 1, None]]
    text = caption(other, rng, ("listing", "single", "relation"))
    return text, "other", false_words(scene, text)


def false_words(scene: Scene, text: str) -> list:
    """The words of a caption that are false of `scene`: those of each object phrase naming no object, else (a
    relation whose objects are there) the direction's word when the relation holds for no named pair."""
    words = text.replace(",", "").split()
    spans = phrase_spans(words)
    out = [[i, None] for a, b in spans if not _names_an_object(scene, words[a:b]) for i in range(a, b)]
    if not out and not caption_holds(scene, text):
        out = [[i, None] for i, w in enumerate(words) if w in EDIT_KINDS["direction"]]
    return out


def vqa_item(scene: Scene, rng: random.Random) -> dict:
    """A question with its true answer and type (colour, shape, count, exist, relation)."""
    objs = scene.objects
    unique_shapes = [o for o in objs if scene.count(shape=o.shape) == 1]
    unique_colours = [o for o in objs if scene.count(colour=o.colour) == 1]
    types = ["count", "exist"] + (["colour"] if unique_shapes else []) + (["shape"] if unique_colours else [])
    types += ["relation"] if len(objs) > 1 else []
    qtype = rng.choice(types)
    if qtype == "colour":
        o = rng.choice(unique_shapes)
        return {"question": f"what color is the {o.shape}", "answer": o.colour, "type": qtype}
    if qtype == "shape":
        o = rng.choice(unique_colours)
        return {"question": f"what shape is the {o.colour} object", "answer": o.shape, "type": qtype}
    if qtype == "count":
        r = rng.random()
        if r < 0.3:
            return {"question": "how many shapes are there", "answer": _number(len(objs)), "type": qtype}
        # the answer is drawn first (uniform over the counts this scene offers), then a shape or colour with it:
        # otherwise 'how many circles' would almost always be 'one' and the words alone would answer
        if r < 0.65:
            counts = {shape: scene.count(shape=shape) for shape in SHAPES}
            n = rng.choice(sorted(set(counts.values())))
            shape = rng.choice([k for k, v in counts.items() if v == n])
            return {"question": f"how many {PLURAL[shape]} are there", "answer": _number(n), "type": qtype}
        counts = {colour: scene.count(colour=colour) for colour in COLOURS}
        n = rng.choice(sorted(set(counts.values())))
        colour = rng.choice([k for k, v in counts.items() if v == n])
        return {"question": f"how many {colour} shapes are there", "answer": _number(n), "type": qtype}
    if qtype == "exist":
        if rng.random() < 0.5:
            o = rng.choice(objs)
            colour, shape = o.colour, o.shape
        else:
            colour, shape = rng.choice([(c, s) for s in SHAPES for c in COLOURS if not scene.has(c, s)])
        return {"question": f"is there {_with_article(colour)} {shape}",
                "answer": "yes" if scene.has(colour, shape) else "no", "type": qtype}
    # yes and no equally often: a holding relation, or one that does not hold
    pairs = [(a, rel, b) for a in objs for b in objs if a is not b for rel in RELATIONS]
    want = rng.random() < 0.5
    chosen = [t for t in pairs if relation_holds(*t[::2], t[1]) == want] or pairs
    a, rel, b = rng.choice(chosen)
    answer = "yes" if relation_holds(a, b, rel) else "no"
    return {"question": f"is the {a.phrase(False)} {rel} the {b.phrase(False)}", "answer": answer, "type": "relation"}


def annotator_answers(answer: str, qtype: str, rng: random.Random, n: int = 10, error: float = 0.1) -> list[str]:
    """VQA v2 style: n annotators, each wrong with probability `error` (a plausible other answer)."""
    pools = {"colour": list(COLOURS), "shape": SHAPES, "count": NUMBERS[:6], "exist": ["yes", "no"],
             "relation": ["yes", "no"]}
    pool = [a for a in pools[qtype] if a != answer]
    return [rng.choice(pool) if rng.random() < error else answer for _ in range(n)]


def nlvr_statement(left: Scene, right: Scene, rng: random.Random, want: bool) -> str:
    """A statement over an image pair whose truth value is `want` (if the pair allows it).

    The form is drawn first, among the forms this pair can make both true and false, then a statement of
    that form with the wanted truth: each form is true as often as false, so the words alone do not give
    the label away (drawing from all true statements made 'both images contain' mostly false).
    """
    forms: dict[str, list[tuple[str, bool]]] = {"contains": [], "both": [], "more": [], "exactly one": []}
    for side, scene in (("left", left), ("right", right)):
        for o in scene.objects:
            forms["contains"].append((f"the {side} image contains {_with_article(o.phrase(False))}", True))
        c, s = rng.choice([(c, s) for s in SHAPES for c in COLOURS if not scene.has(c, s)])
        forms["contains"].append((f"the {side} image contains {_with_article(c)} {s}", False))
    # dict.fromkeys keeps first-seen order; a set's order changes with the process's hash seed
    for shape in dict.fromkeys(o.shape for o in left.objects + right.objects):
        both = left.count(shape=shape) > 0 and right.count(shape=shape) > 0
        forms["both"].append((f"both images contain {_with_article(shape)}", both))
    nl, nr = len(left.objects), len(right.objects)
    if nl != nr:
        forms["more"].append(("the left image has more shapes than the right image", nl > nr))
        forms["more"].append(("the right image has more shapes than the left image", nr > nl))
    for colour in dict.fromkeys(o.colour for o in left.objects + right.objects):
        one = (left.count(colour=colour) > 0) != (right.count(colour=colour) > 0)
        forms["exactly one"].append((f"exactly one image contains {_with_article(colour)} shape", one))
    usable = [f for f, options in forms.items() if {t for _, t in options} == {True, False}]
    form = rng.choice(usable)  # never empty: 'contains' has a present and an absent object of each image
    options = forms[form]
    return rng.choice([s for s, t in options if t == want] or [s for s, _ in options])


def nlvr_truth(statement: str, left: Scene, right: Scene) -> bool:
    """Evaluate a statement produced by `nlvr_statement` (used for its label)."""
    words = statement.split()
    if statement.startswith("the ") and " image contains " in statement:
        scene = left if words[1] == "left" else right
        return scene.has(words[-2], words[-1])
    if statement.startswith("both images contain"):
        return left.count(shape=words[-1]) > 0 and right.count(shape=words[-1]) > 0
    if "has more shapes than" in statement:
        nl, nr = len(left.objects), len(right.objects)
        return nl > nr if words[1] == "left" else nr > nl
    if statement.startswith("exactly one image contains"):
        c = words[-2]
        return (left.count(colour=c) > 0) != (right.count(colour=c) > 0)
    raise ValueError(f"not an NLVR statement of ShapesWorld: {statement!r}")


def ve_items(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """One SNLI-VE hypothesis per label, as (sentence, label), all of one form drawn per image.

    entailment: true of the image; contradiction: false of it; neutral: about an object the image does not
    show, so that the image says nothing either way. Every label uses the same form (an object's size, or
    a relation between two objects), so the words alone do not give the label away.
    """
    objs = scene.objects
    absent = rng.choice([(c, s) for s in SHAPES for c in COLOURS if not scene.has(c, s)])
    unseen = f"{absent[0]} {absent[1]}"
    holding = relations(scene)
    out = []
    if holding and rng.random() < 0.5:
        a, rel, b = rng.choice(holding)
        out.append((f"the {a.phrase(False)} is {rel} the {b.phrase(False)}", "entailment"))
        out.append((f"the {b.phrase(False)} is {rel} the {a.phrase(False)}", "contradiction"))  # the converse
        x = rng.choice([a, b])
        first, second = (x.phrase(False), unseen) if rng.random() < 0.5 else (unseen, x.phrase(False))
        out.append((f"the {first} is {rel} the {second}", "neutral"))
    else:
        o = rng.choice(objs)
        other = "large" if o.size == "small" else "small"
        out.append((f"the {o.phrase(False)} is {o.size}", "entailment"))
        out.append((f"the {o.phrase(False)} is {other}", "contradiction"))
        out.append((f"the {unseen} is {rng.choice(list(SIZES))}", "neutral"))
    return out


def referring_expression(scene: Scene, target: int, rng: random.Random) -> str:
    """Appearance-only expression (no position words, as RefCOCO+) that picks out exactly `target`."""
    o = scene.objects[target]
    options = []
    if scene.count(shape=o.shape) == 1:
        options.append(f"the {o.shape}")
    if scene.count(colour=o.colour) == 1:
        options.append(f"the {o.colour} shape")
    options.append(f"the {o.colour} {o.shape}")
    options.append(f"the {o.size} {o.colour} {o.shape}")
    return rng.choice(options)


def proposals(scene: Scene, rng: random.Random, res: int, n_random: int = 3) -> list[list[float]]:
    """Region proposals [x, y, w, h, score] in pixels: jittered true boxes, unions and random boxes."""
    def clip(b: tuple) -> tuple:
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in b)
        return (x0, y0, max(x1, x0 + 0.02), max(y1, y0 + 0.02))

    boxes = []
    for o in scene.objects:
        x0, y0, x1, y1 = o.box
        w, h = x1 - x0, y1 - y0
        j = [rng.uniform(-0.08, 0.08) for _ in range(4)]
        boxes.append(clip((x0 + j[0] * w, y0 + j[1] * h, x1 + j[2] * w, y1 + j[3] * h)))
    if len(scene.objects) > 1:
        a, b = rng.sample(scene.objects, 2)
        boxes.append(clip((min(a.box[0], b.box[0]), min(a.box[1], b.box[1]),
                           max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))))
    for _ in range(n_random):
        side = rng.uniform(0.15, 0.5)
        x0, y0 = rng.uniform(0, 1 - side), rng.uniform(0, 1 - side)
        boxes.append((x0, y0, x0 + side, y0 + side))
    rng.shuffle(boxes)
    return [[round(b[0] * res, 2), round(b[1] * res, 2), round((b[2] - b[0]) * res, 2),
             round((b[3] - b[1]) * res, 2), round(rng.uniform(0.5, 1.0), 3)] for b in boxes]


def vocabulary() -> list[str]:
    """Every word ShapesWorld text can contain."""
    words = set(SHAPES) | set(PLURAL.values()) | set(COLOURS) | set(SIZES) | set(NUMBERS) | {"color", "shape",
                                                                                                 "shapes"}
    templates = list(RELATIONS) + NEUTRAL + [
        "a an and other there is are what the object how many yes no left right image images contains contain",
        "both has have more than exactly one of to above below",
    ]
    for t in templates:
        words |= set(t.replace("{o}", "").split())
    words |= set(",.?!;:'-")  # punctuation a user's own text may carry
    return sorted(w for w in words if w)
