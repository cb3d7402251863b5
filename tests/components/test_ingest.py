import pytest

from components.ingest import (
    EVAL,
    TEST,
    TRAIN,
    check_layout,
    parse_annotation_line,
    parse_annotation_text,
    read_image,
    split_of,
)
from pipeline.errors import DataError


def test_parses_a_real_oxford_line(hierarchy):
    record = parse_annotation_line("american_pit_bull_terrier_100 3 2 2\n", "trainval.txt", 7, hierarchy)
    assert record.image == "american_pit_bull_terrier_100"
    assert (record.breed, record.species, record.breed_in_species) == (2, 1, 1)
    assert record.where == "trainval.txt:7"


def test_skips_comments_blank_lines_and_tolerates_bom_crlf_and_spaces(hierarchy):
    text = "\ufeff#Image CLASS-ID SPECIES BREED ID\r\n\r\nAbyssinian_1 1 1 1  \r\n   \nBengal_2 6 1 2\n"
    records = parse_annotation_text(text, "list.txt", hierarchy)
    assert [(r.image, r.line_no, r.breed) for r in records] == [("Abyssinian_1", 3, 0), ("Bengal_2", 5, 5)]


@pytest.mark.parametrize(
    "line, message",
    [
        ("Abyssinian_1 1 1", "expected 4 columns"),
        ("Abyssinian_1 one 1 1", "must be integers"),
        ("Abyssinian_1 38 1 1", "CLASS-ID 38 is outside 1..37"),
        ("Abyssinian_1 0 1 1", "CLASS-ID 0 is outside"),
        ("Abyssinian_1 1 2 1", "contradict CLASS-ID 1 (Abyssinian"),
        ("beagle_1 5 2 1", "contradict CLASS-ID 5 (beagle"),
    ],
)
def test_malformed_lines_name_file_and_line(hierarchy, line, message):
    with pytest.raises(DataError) as error:
        parse_annotation_line(line, "annotations/test.txt", 12, hierarchy)
    assert str(error.value).startswith("annotations/test.txt:12: ")
    assert message in str(error.value)


def test_split_is_deterministic_and_near_the_fraction():
    names = [f"pet_{i}" for i in range(4000)]
    splits = [split_of(n, "trainval.txt", 0.2) for n in names]
    assert splits == [split_of(n, "trainval.txt", 0.2) for n in names]
    assert set(splits) == {TRAIN, EVAL}
    assert 0.18 < splits.count(EVAL) / len(names) < 0.22
    assert split_of("pet_1", "test.txt", 0.2) == TEST
    assert split_of("pet_1", "trainval.txt", 0.0) == TRAIN


def test_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        check_layout(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="images: missing or empty"):
        check_layout(str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="trainval.txt: annotation file not found"):
        check_layout(str(tmp_path))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "trainval.txt").write_text("")
    with pytest.raises(DataError, match="trainval.txt: annotation file is empty"):
        check_layout(str(tmp_path))


def test_missing_and_empty_images_name_the_annotation_line(tmp_path, hierarchy):
    record = parse_annotation_line("Bengal_9 6 1 2", str(tmp_path / "trainval.txt"), 4, hierarchy)
    with pytest.raises(DataError, match=r"Bengal_9.jpg \(annotated at .*trainval.txt:4\): cannot read image"):
        read_image(str(tmp_path), record)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "Bengal_9.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="image file is empty"):
        read_image(str(tmp_path), record)
