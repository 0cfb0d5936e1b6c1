"""The caption grammar of the embedded dataset: five paraphrases per scene, in two styles.

Both styles share one grammar (noun phrases for objects, position phrases, spatial relations,
counting, backgrounds) and most words; they differ in template preferences, synonym preferences,
word order (style "b" fronts position phrases and often ends with a full stop) and a few words of
their own (American spelling, "figures", "canvas"), like two caption corpora written by different
annotators. Every statement a caption makes is true of its scene: colours and shapes named are
those of the objects mentioned, positions are their cells and relations hold between the cells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jwae_ext.data.scenes import COLOURS, POSITIONS, SHAPES, Choices, Draws, SceneObject

CAPTIONS_PER_IMAGE = 5
_NUMBERS = ("one", "two", "three")
_RELATIONS = ("left of", "right of", "above", "below", "next to")


@dataclass(frozen=True)
class Phrasing:
    """One style's word choices: weighted alternative phrases for each slot of the grammar."""

    shapes: dict[str, Choices]
    colours: dict[str, Choices]
    sizes: tuple[Choices, Choices]  # small, big
    positions: dict[str, Choices]  # cell name -> phrases
    relations: dict[str, Choices]
    templates: Choices  # keys of _TEMPLATES
    openers: Choices  # prefixes of a plain listing ("" for none)
    pair_joiners: Choices  # "x and y", "x together with y"
    verbs: Choices  # "x is placed at the top"
    things: Choices  # collective nouns for counting
    backgrounds: Choices
    backdrop: Choices
    coloured: Choices  # "a circle coloured red"
    image_words: Choices  # "... of the image"
    single: Choices  # "a single red circle"
    p_size: float
    p_colour: float
    p_colour_after: float  # colour put after the noun
    p_image_suffix: float
    p_main_first: float
    p_full_stop: float


def _w(*options: str | tuple[str, float]) -> Choices:
    """Phrases with weight 1 unless given as ``(phrase, weight)``."""
    pairs = [o if isinstance(o, tuple) else (o, 1.0) for o in options]
    return Choices([p for p, _ in pairs], [w for _, w in pairs])


def _format(phrases: Choices, **fields: str) -> Choices:
    """The same choices with ``str.format`` fields filled in."""
    return Choices([p.format(**fields) for p in phrases.options], phrases.weights)


def _positions(corner: Choices, side: Choices, centre: Choices) -> dict[str, Choices]:
    """Position phrases for every cell from patterns: ``{v}``/``{h}`` the vertical/horizontal
    word of a corner, ``{u}`` "upper"/"lower"; ``{s}`` the side's name, ``{a}`` its adjective."""
    adjective = {"top": "upper", "bottom": "lower", "left": "left", "right": "right"}
    table = {"centre": centre}
    for name in POSITIONS:
        parts = name.split()
        if len(parts) == 2:
            v, h = parts
            table[name] = _format(corner, v=v, h=h, u=adjective[v])
        elif name != "centre":
            table[name] = _format(side, s=name, a=adjective[name])
    return table


PHRASINGS = {
    "a": Phrasing(
        shapes={
            "circle": _w(("circle", 8), ("disc", 1), ("dot", 1), ("round shape", 1)),
            "square": _w(("square", 8), ("box", 1), ("block", 1)),
            "triangle": _w(("triangle", 8), ("triangular shape", 1)),
            "diamond": _w(("diamond", 7), ("rhombus", 1), ("lozenge", 1)),
            "cross": _w(("cross", 7), ("plus sign", 2)),
            "star": _w(("star", 8), ("five-pointed star", 1)),
        },
        colours={
            "red": _w(("red", 8), ("crimson", 1), ("scarlet", 1)),
            "green": _w(("green", 8), ("emerald", 1), ("lime", 1)),
            "blue": _w(("blue", 8), ("cobalt", 1), ("navy", 1)),
            "yellow": _w(("yellow", 8), ("golden", 1), ("lemon", 1)),
            "purple": _w(("purple", 6), ("violet", 2), ("lilac", 1)),
            "orange": _w(("orange", 8), ("amber", 1), ("tangerine", 1)),
            "cyan": _w(("cyan", 5), ("turquoise", 2), ("teal", 1), ("aqua", 1)),
        },
        sizes=(
            _w(("small", 6), ("little", 2), ("tiny", 1), ("smallish", 1)),
            _w(("big", 6), ("large", 3), ("huge", 1), ("giant", 1)),
        ),
        positions=_positions(
            corner=_w(
                ("in the {v} {h} corner", 5), ("at the {v} {h}", 2), ("in the {u} {h}", 1),
                ("in the {u} {h} corner", 1),
            ),
            side=_w(
                ("on the {s}", 4), ("at the {s}", 2), ("near the {s}", 1), ("on the {s} side", 1),
                ("in the {a} part", 1), ("along the {s} edge", 1),
            ),
            centre=_w(("in the centre", 6), ("in the middle", 2), ("at the centre", 1)),
        ),
        relations={
            "left of": _w(("to the left of", 6), ("left of", 1)),
            "right of": _w(("to the right of", 6), ("right of", 1)),
            "above": _w(("above", 5), ("over", 1), ("higher than", 1)),
            "below": _w(("below", 5), ("under", 2), ("beneath", 1), ("lower than", 1)),
            "next to": _w(("next to", 4), ("beside", 2), ("near", 1), ("close to", 1)),
        },
        templates=_w(
            ("listing", 4), ("there_is", 3), ("each_placed", 3), ("relation", 3),
            ("with", 1), ("counting", 2), ("background", 1), ("placed", 1), ("fronted", 0.5),
        ),
        openers=_w(
            ("", 10), ("a picture of", 2), ("an image of", 2), ("a photo of", 1),
            ("a drawing of", 1), ("a scene with", 1), ("an image showing", 0.5),
        ),
        pair_joiners=_w(("and", 8), ("together with", 1), ("along with", 1)),
        verbs=_w(("is", 4), ("sits", 1), ("is placed", 1), ("is drawn", 1), ("appears", 1)),
        things=_w(("shapes", 4), ("objects", 3), ("things", 1)),
        backgrounds=_w(("dark", 4), ("black", 3), ("plain dark", 1)),
        backdrop=_w(("background", 4), ("backdrop", 1)),
        coloured=_w(("coloured", 3), ("in", 2), ("painted", 1)),
        image_words=_w(("image", 4), ("picture", 2), ("frame", 1)),
        single=_w(("a single", 3), ("only one", 1), ("just one", 1)),
        p_size=0.5,
        p_colour=0.9,
        p_colour_after=0.1,
        p_image_suffix=0.15,
        p_main_first=0.7,
        p_full_stop=0.1,
    ),
    "b": Phrasing(
        shapes={
            "circle": _w(("circle", 4), ("disc", 4), ("dot", 1), ("round shape", 2)),
            "square": _w(("square", 4), ("box", 2), ("block", 2)),
            "triangle": _w(("triangle", 5), ("triangular shape", 2)),
            "diamond": _w(("diamond", 4), ("rhombus", 3), ("lozenge", 1)),
            "cross": _w(("cross", 3), ("plus sign", 3)),
            "star": _w(("star", 4), ("five-pointed star", 2)),
        },
        colours={
            "red": _w(("red", 4), ("crimson", 2), ("scarlet", 2)),
            "green": _w(("green", 4), ("emerald", 2), ("lime", 1)),
            "blue": _w(("blue", 4), ("cobalt", 2), ("navy", 1)),
            "yellow": _w(("yellow", 4), ("golden", 2), ("lemon", 1)),
            "purple": _w(("purple", 3), ("violet", 3), ("lilac", 1)),
            "orange": _w(("orange", 4), ("amber", 2), ("tangerine", 1)),
            "cyan": _w(("cyan", 2), ("turquoise", 3), ("teal", 2), ("aqua", 1)),
        },
        sizes=(
            _w(("small", 2), ("little", 2), ("tiny", 3), ("smallish", 1)),
            _w(("big", 2), ("large", 4), ("huge", 1), ("giant", 1)),
        ),
        positions=_positions(
            corner=_w(
                ("in the {v} {h} corner", 2), ("at the {v} {h}", 1), ("in the {u} {h}", 3),
                ("in the {u} {h} corner", 2),
            ),
            side=_w(
                ("on the {s}", 1), ("at the {s}", 1), ("near the {s}", 2), ("on the {s} side", 3),
                ("in the {a} part", 2), ("along the {s} edge", 1),
            ),
            centre=_w(("in the center", 4), ("in the middle", 3), ("at the center", 1)),
        ),
        relations={
            "left of": _w(("to the left of", 3), ("left of", 2)),
            "right of": _w(("to the right of", 3), ("right of", 2)),
            "above": _w(("above", 2), ("over", 2), ("higher than", 1)),
            "below": _w(("below", 2), ("under", 1), ("beneath", 2), ("lower than", 1)),
            "next to": _w(("next to", 2), ("beside", 3), ("near", 1), ("close to", 2)),
        },
        templates=_w(
            ("listing", 3), ("there_is", 1), ("each_placed", 1), ("relation", 2), ("with", 2),
            ("counting", 2), ("background", 1), ("placed", 3), ("fronted", 3),
        ),
        openers=_w(
            ("", 2), ("a picture of", 1), ("an image of", 1), ("a drawing of", 1),
            ("an image showing", 3), ("the picture contains", 2), ("we can see", 2),
            ("this image shows", 2), ("an illustration of", 1),
        ),
        pair_joiners=_w(("and", 4), ("together with", 2), ("along with", 2)),
        verbs=_w(("is", 1), ("sits", 2), ("is placed", 2), ("can be seen", 3), ("is located", 2)),
        things=_w(("figures", 3), ("shapes", 2), ("objects", 2), ("items", 1)),
        backgrounds=_w(("textured", 3), ("gray", 2), ("brownish", 1)),
        backdrop=_w(("background", 3), ("backdrop", 2)),
        coloured=_w(("colored", 3), ("in", 1), ("painted", 1)),
        image_words=_w(("picture", 3), ("canvas", 2), ("image", 1), ("frame", 1)),
        single=_w(("a single", 2), ("only one", 1), ("just one", 1)),
        p_size=0.6,
        p_colour=0.85,
        p_colour_after=0.2,
        p_image_suffix=0.25,
        p_main_first=0.5,
        p_full_stop=0.6,
    ),
}  # fmt: skip


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


class _Writer:
    """Phrases for one scene in one style. The ``mark*`` hooks return a phrase as it is; the
    grounding data's writer (:class:`_MarkingWriter`) marks it with the entity it refers to."""

    def __init__(self, style: Phrasing, draws: Draws):
        self.style, self.draws = style, draws

    def noun_phrase(self, obj: SceneObject, determiner: str | None = None) -> str:
        """E.g. "a small red circle" or "a circle coloured red"; ``determiner`` replaces the
        article."""
        s, d = self.style, self.draws
        words = []
        if d.chance(s.p_size):
            words.append(s.sizes[obj.size].draw(d))
        colour = s.colours[COLOURS[obj.colour]].draw(d) if d.chance(s.p_colour) else None
        after = colour is not None and d.chance(s.p_colour_after)
        if colour is not None and not after:
            words.append(colour)
        words.append(s.shapes[SHAPES[obj.shape]].draw(d))
        if after:
            words += [s.coloured.draw(d), colour]
        return self.mark(obj, f"{determiner or _article(words[0])} {' '.join(words)}")

    def position(self, obj: SceneObject) -> str:
        s, d = self.style, self.draws
        phrase = s.positions[POSITIONS[obj.position]].draw(d)
        if d.chance(s.p_image_suffix):
            phrase += f" of {self.mark_not_visual(f'the {s.image_words.draw(d)}')}"
        return phrase

    def relation(self, a: SceneObject, b: SceneObject) -> str:
        """A true spatial relation of ``a`` to ``b``."""
        (ra, ca), (rb, cb) = divmod(a.position, 3), divmod(b.position, 3)
        true = [
            name
            for name, holds in zip(
                _RELATIONS,
                (ca < cb, ca > cb, ra < rb, ra > rb, max(abs(ra - rb), abs(ca - cb)) == 1),
                strict=True,
            )
            if holds
        ]
        return self.style.relations[self.draws.pick(true)].draw(self.draws)

    def listing(self, objects: Sequence[SceneObject]) -> str:
        """All objects ("x, y and z"; the last of three sometimes only "another shape")."""
        phrases = [self.noun_phrase(o) for o in objects]
        if len(phrases) == 2:
            return f"{phrases[0]} {self.style.pair_joiners.draw(self.draws)} {phrases[1]}"
        if len(phrases) == 3 and self.draws.chance(0.15):
            phrases[2] = self.mark(objects[2], self.draws.pick(("another shape", "another object")))
        return _join(phrases)

    def placed(self, obj: SceneObject, determiner: str | None = None) -> str:
        return f"{self.noun_phrase(obj, determiner)} {self.position(obj)}"

    def mark(self, obj: SceneObject, phrase: str) -> str:
        """``phrase``, which names ``obj``."""
        return phrase

    def mark_group(self, objects: Sequence[SceneObject], phrase: str) -> str:
        """``phrase``, which names all of ``objects`` together."""
        return phrase

    def mark_scene(self, phrase: str) -> str:
        """``phrase``, which names the whole scene (the background)."""
        return phrase

    def mark_not_visual(self, phrase: str) -> str:
        """``phrase``, which names nothing that can be boxed (the image itself)."""
        return phrase


class _MarkingWriter(_Writer):
    """A writer whose phrases carry Flickr30k Entities markup, ``[/EN#<entity>/<type> words]``:
    object ``k`` of the scene is entity ``k + 1`` of the type of its shape, all objects together
    (counting) entity ``n + 1`` of all their shapes' types, the background entity ``n + 2`` of
    type ``scene``, and the image itself entity 0, ``notvisual``. It draws exactly what the plain
    writer draws, so removing the markup gives the plain caption."""

    def __init__(self, style: Phrasing, draws: Draws, objects: Sequence[SceneObject]):
        super().__init__(style, draws)
        self.objects = list(objects)

    def mark(self, obj: SceneObject, phrase: str) -> str:
        entity = self.objects.index(obj) + 1
        return f"[/EN#{entity}/{SHAPES[obj.shape]} {phrase}]"

    def mark_group(self, objects: Sequence[SceneObject], phrase: str) -> str:
        types = "/".join(sorted({SHAPES[o.shape] for o in objects}))
        return f"[/EN#{len(self.objects) + 1}/{types} {phrase}]"

    def mark_scene(self, phrase: str) -> str:
        return f"[/EN#{len(self.objects) + 2}/scene {phrase}]"

    def mark_not_visual(self, phrase: str) -> str:
        return f"[/EN#0/notvisual {phrase}]"


def group_entity(num_objects: int) -> str:
    """The entity id that :class:`_MarkingWriter` gives all ``num_objects`` objects together."""
    return str(num_objects + 1)


def scene_entity(num_objects: int) -> str:
    """The entity id that :class:`_MarkingWriter` gives the background."""
    return str(num_objects + 2)


_MARKUP = re.compile(r"\[/EN#\S+ |\]")


def strip_markup(caption: str) -> str:
    """The plain caption of a marked-up one (the embedded captions' words hold no brackets)."""
    return _MARKUP.sub("", caption)


def _join(phrases: Sequence[str]) -> str:
    """Join phrases as "x", "x and y", "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _template_listing(w: _Writer, objects: Sequence[SceneObject]) -> str:
    opener = w.style.openers.draw(w.draws)
    return f"{opener} {w.listing(objects)}".strip()


def _template_there_is(w: _Writer, objects: Sequence[SceneObject]) -> str:
    return "there is " + " and ".join(w.placed(o) for o in objects)


def _template_each_placed(w: _Writer, objects: Sequence[SceneObject]) -> str:
    return _join([w.placed(o) for o in objects])


def _template_relation(w: _Writer, objects: Sequence[SceneObject]) -> str:
    if len(objects) == 1:
        return _template_each_placed(w, objects)
    a, b = objects[0], objects[1]
    text = f"{w.noun_phrase(a)} {w.relation(a, b)} {w.noun_phrase(b)}"
    if len(objects) == 3:
        text += f" and {w.placed(objects[2])}"
    return text


def _template_counting(w: _Writer, objects: Sequence[SceneObject]) -> str:
    n = len(objects)
    if n == 1:
        return w.placed(objects[0], determiner=w.style.single.draw(w.draws))
    things = w.mark_group(objects, f"{_NUMBERS[n - 1]} {w.style.things.draw(w.draws)}")
    return f"{things} : {w.listing(objects)}"


def _template_background(w: _Writer, objects: Sequence[SceneObject]) -> str:
    s, d = w.style, w.draws
    listing = w.listing(objects)
    return f"{listing} on {w.mark_scene(f'a {s.backgrounds.draw(d)} {s.backdrop.draw(d)}')}"


def _template_fronted(w: _Writer, objects: Sequence[SceneObject]) -> str:
    main, rest = objects[0], objects[1:]
    text = f"{w.position(main)} , {w.noun_phrase(main)}"
    if rest:
        text += f" {w.relation(main, rest[0])} {w.noun_phrase(rest[0])}"
        text += "".join(f" and {w.placed(o)}" for o in rest[1:])
    return text


def _template_placed(w: _Writer, objects: Sequence[SceneObject]) -> str:
    verb = w.style.verbs.draw(w.draws)
    text = f"{w.noun_phrase(objects[0])} {verb} {w.position(objects[0])}"
    return text + "".join(f" , {w.placed(o)}" for o in objects[1:])


def _template_with(w: _Writer, objects: Sequence[SceneObject]) -> str:
    if len(objects) == 1:
        return _template_placed(w, objects)
    a, b = objects[0], objects[1]
    text = f"{w.noun_phrase(a)} with {w.noun_phrase(b)} {w.relation(b, a)} it"
    return text + "".join(f" and {w.placed(o)}" for o in objects[2:])


_TEMPLATES = {
    "listing": _template_listing,
    "there_is": _template_there_is,
    "each_placed": _template_each_placed,
    "relation": _template_relation,
    "counting": _template_counting,
    "background": _template_background,
    "fronted": _template_fronted,
    "placed": _template_placed,
    "with": _template_with,
}


def write_captions(
    objects: Sequence[SceneObject],
    style: str | Phrasing,
    draws: Draws,
    count: int = CAPTIONS_PER_IMAGE,
    *,
    marked: bool = False,
) -> list[str]:
    """``count`` captions of one scene in ``style`` ("a", "b" or a :class:`Phrasing`), distinct
    where the grammar allows (a few redraws), each a true statement about the scene.
    ``marked=True``: the same captions with their phrases marked up as Flickr30k Entities
    sentences (see :class:`_MarkingWriter`)."""
    phrasing = PHRASINGS[style] if isinstance(style, str) else style
    writer = _MarkingWriter(phrasing, draws, objects) if marked else _Writer(phrasing, draws)
    captions: list[str] = []
    plain: list[str] = []  # what is compared: marked captions differ where their words do
    for _ in range(count):
        for _attempt in range(4):
            order = list(objects)
            if len(order) > 1 and not draws.chance(phrasing.p_main_first):
                order = draws.shuffled(order)
            template = _TEMPLATES[phrasing.templates.draw(draws)]
            text = template(writer, order)
            if draws.chance(phrasing.p_full_stop):
                text += " ."
            if strip_markup(text) not in plain:
                break
        captions.append(text)
        plain.append(strip_markup(text))
    if marked:  # Flickr30k Entities sentences separate punctuation: a phrase ends at "]"
        return [text.replace("],", "] ,") for text in captions]
    return captions
