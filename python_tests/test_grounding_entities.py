"""The Flickr30k Entities sentence and annotation parsers on hand-written files."""

import numpy as np
import pytest

from jwae_ext.grounding.entities import (
    AnnotatedObject,
    Annotation,
    Phrase,
    format_annotation,
    format_sentence,
    parse_sentence,
    read_annotation,
    read_sentences,
)

SENTENCES = (
    "[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at "
    "[/EN#0/notvisual something] .\n"
    "[/EN#18/people/other A young man] holds [/EN#20/other two balls] , "
    "[/EN#21/scene a field] behind .\n"
    "\n"
    "Nothing marked here .\n"
)

ANNOTATION = """<annotation>
  <filename>42.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox></object>
  <object><name>20</name><bndbox><xmin>200</xmin><ymin>50</ymin><xmax>220</xmax><ymax>70</ymax></bndbox></object>
  <object><name>20</name><name>18</name><bndbox><xmin>300</xmin><ymin>60</ymin><xmax>330</xmax><ymax>90</ymax></bndbox></object>
  <object><name>21</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>19</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


def test_sentences_with_several_types_and_notvisual(tmp_path):
    path = tmp_path / "42.txt"
    path.write_text(SENTENCES)
    sentences = read_sentences(path)
    assert len(sentences) == 3  # the empty line is no caption
    first, second, plain = sentences
    assert first.text == "A man in an orange hat starring at something ."
    assert first.phrases == (
        Phrase(0, ("A", "man"), "18", ("people",)),
        Phrase(3, ("an", "orange", "hat"), "19", ("clothing",)),
        Phrase(8, ("something",), "0", ("notvisual",)),
    )
    assert [p.visual for p in first.phrases] == [True, True, False]
    assert second.phrases[0].types == ("people", "other")
    assert second.phrases[0].entity == first.phrases[0].entity  # one coreference chain
    assert plain.phrases == () and plain.text == "Nothing marked here ."
    for sentence in sentences:
        assert parse_sentence(format_sentence(sentence)) == sentence


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[/EN#1/people A [/EN#2/other man] ]", "nested"),
        ("[/EN#1/people A man", "not closed"),
        ("A man] walks", "closes no phrase"),
        ("[/EN#1/people] walks", "phrase header"),
        ("[EN#1/people a man]", "phrase header"),
        ("[/EN#x/people a man]", "phrase header"),
        ("[/EN#1/people a ma]n]", "stray bracket"),
        ("[/EN#1/people", "has no words"),
    ],
)
def test_bad_markup_names_the_file_and_the_line(tmp_path, line, message):
    path = tmp_path / "7.txt"
    path.write_text(f"[/EN#3/people A fine line] .\n{line}\n")
    with pytest.raises(ValueError, match=message) as err:
        read_sentences(path)
    assert f"{path}, line 2" in str(err.value)


def test_annotation_boxes_shared_ids_and_flags(tmp_path):
    path = tmp_path / "42.xml"
    path.write_text(ANNOTATION)
    a = read_annotation(path)
    assert (a.width, a.height, a.depth, a.filename) == (500, 375, 3, "42.jpg")
    # 1-based XML corners read 0-based, as flickr30k_entities_utils.get_annotations does.
    assert a.boxes("18").tolist() == [[9, 19, 109, 219], [299, 59, 329, 89]]
    assert a.boxes("20").tolist() == [[199, 49, 219, 69], [299, 59, 329, 89]]
    assert a.boxes("21").shape == (0, 4) and a.boxes("99").shape == (0, 4)
    assert a.objects[3] == AnnotatedObject(("21",), scene=True)
    assert a.objects[4] == AnnotatedObject(("19",), nobox=True)
    assert read_annotation(_write(tmp_path / "again.xml", format_annotation(a))) == a


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><size><width>5</width>", "not valid XML"),
        ("<annotation></annotation>", "missing <size>"),
        ("<annotation><size><width>a</width><height>3</height></size></annotation>", "<width>"),
        (
            "<annotation><size><width>5</width><height>3</height></size>"
            "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox>"
            "</object></annotation>",
            "<object> 1: needs one or more",
        ),
        (
            "<annotation><size><width>5</width><height>3</height></size>"
            "<object><name>1</name></object></annotation>",
            "<object> 1: needs a <bndbox>",
        ),
        (
            "<annotation><size><width>5</width><height>3</height></size>"
            "<object><name>1</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax></bndbox>"
            "</object></annotation>",
            "<object> 1, <bndbox>: missing <ymax>",
        ),
        (
            '<!DOCTYPE a [<!ENTITY x "y">]><annotation><size><width>5</width>'
            "<height>3</height></size></annotation>",
            "not allowed",
        ),
    ],
)
def test_bad_annotations_name_the_file_and_the_element(tmp_path, text, message):
    path = _write(tmp_path / "9.xml", text)
    with pytest.raises(ValueError, match=message) as err:
        read_annotation(path)
    assert str(path) in str(err.value)


def test_annotation_without_objects_is_valid():
    a = Annotation(4, 3)
    assert np.array_equal(a.boxes("1"), np.zeros((0, 4)))
