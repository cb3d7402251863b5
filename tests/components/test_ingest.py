import pytest

from common.errors import DataError
from components import records as rec
from components.ingest import (
    EVAL,
    TEST,
    TRAIN,
    assign_split,
    check_layout,
    label_record,
    parse_oxford_line,
    read_image_bytes,
    read_oxford_annotations,
    resolve_duplicates,
)
from components.records import Provenance, Quarantined, Rejected, SourceRecord


def test_parses_a_real_oxford_line(hierarchy):
    record = parse_oxford_line("american_pit_bull_terrier_100 3 2 2\n", "a/trainval.txt", 7, "a/images")
    assert record.key == "american_pit_bull_terrier_100"
    assert (record.class_id, record.species_id, record.breed_id) == (3, 2, 2)
    assert record.split_hint == "trainval" and str(record.provenance) == "a/trainval.txt:7"
    assert record.image_path == "a/images/american_pit_bull_terrier_100.jpg"
    labelled = label_record(record, hierarchy)
    assert (labelled.breed, labelled.species, labelled.breed_in_species) == (2, 1, 1)


def test_bom_crlf_blank_lines_trailing_spaces_and_comments(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(b"\xef\xbb\xbf#Image CLASS-ID SPECIES BREED ID\r\n\r\nAbyssinian_1 1 1 1  \r\n   \nBengal_2 6 1 2")
    records = read_oxford_annotations(str(path), "images", 0.1)
    assert [(r.key, r.provenance.line_no, r.split_hint) for r in records] == [
        ("Abyssinian_1", 3, "test"),
        ("Bengal_2", 5, "test"),
    ]


@pytest.mark.parametrize(
    "line, message",
    [("Abyssinian_1 1 1", "expected 4 columns"), ("Abyssinian_1 one 1 1", "must be integers"), ("x", "got 1")],
)
def test_malformed_lines_are_quarantined_with_file_and_line(line, message):
    entry = parse_oxford_line(line, "ann/test.txt", 12, "images")
    assert isinstance(entry, Quarantined)
    assert (entry.reason, entry.stage, entry.split, str(entry.provenance)) == (
        rec.MALFORMED_LINE,
        rec.STAGE_PARSE,
        "test",
        "ann/test.txt:12",
    )
    assert message in entry.message and entry.key == line.split()[0]


@pytest.mark.parametrize(
    "ids, reason, message",
    [
        ((38, 1, 1), rec.LABEL_OUT_OF_RANGE, "CLASS-ID 38 is outside 1..37"),
        ((0, 1, 1), rec.LABEL_OUT_OF_RANGE, "CLASS-ID 0 is outside"),
        ((1, 2, 1), rec.INCONSISTENT_LABEL, "contradict CLASS-ID 1 (Abyssinian"),
        ((5, 2, 1), rec.INCONSISTENT_LABEL, "contradict CLASS-ID 5 (beagle"),
    ],
)
def test_bad_ids_are_rejected_with_a_reason(hierarchy, ids, reason, message):
    record = SourceRecord("x_1", Provenance("t.txt", 3), "trainval", *ids)
    with pytest.raises(Rejected) as error:
        label_record(record, hierarchy)
    assert error.value.reason == reason and message in error.value.message


def test_names_map_through_the_hierarchy_case_insensitively(hierarchy):
    record = SourceRecord("cat/bengal/1.jpg", Provenance("m.csv", 2), species_name="Cat", breed_name="bengal")
    assert label_record(record, hierarchy).breed == hierarchy.by_name["Bengal"].global_index
    for species, breed, reason in [("dog", "Bengal", rec.INCONSISTENT_LABEL), ("cat", "lynx", rec.UNKNOWN_LABEL)]:
        with pytest.raises(Rejected) as error:
            label_record(SourceRecord("k", Provenance("m"), species_name=species, breed_name=breed), hierarchy)
        assert error.value.reason == reason


def test_duplicates_count_once_and_conflicts_are_rejected():
    a = SourceRecord("Bengal_1", Provenance("trainval.txt", 9), "trainval", 6, 1, 2)
    again = SourceRecord("Bengal_1", Provenance("trainval.txt", 40), "trainval", 6, 1, 2)
    assert resolve_duplicates("Bengal_1", [again, a]) == (a, 1)
    in_test = SourceRecord("Bengal_1", Provenance("test.txt", 3), "test", 6, 1, 2)
    with pytest.raises(Rejected) as error:
        resolve_duplicates("Bengal_1", [a, in_test])
    assert error.value.reason == rec.CONFLICTING_DUPLICATE and "test.txt:3" in error.value.message


def test_split_is_deterministic_and_near_the_fractions():
    names = [f"pet_{i}" for i in range(6000)]
    splits = [assign_split(n, "trainval", 0.2, 0.0) for n in names]
    assert splits == [assign_split(n, "trainval", 0.2, 0.0) for n in names]
    assert 0.18 < splits.count(EVAL) / len(names) < 0.22 and TEST not in splits
    unhinted = [assign_split(n, None, 0.1, 0.3) for n in names]
    assert 0.27 < unhinted.count(TEST) / len(names) < 0.33
    assert 0.05 < unhinted.count(EVAL) / len(names) < 0.09  # 10% of the remaining 70%
    assert assign_split("pet_1", "test", 0.2, 0.0) == TEST
    assert assign_split("pet_1", "trainval", 0.0, 0.0) == TRAIN


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


def test_missing_and_empty_files_are_rejected(tmp_path):
    record = SourceRecord("Bengal_9", Provenance("t.txt", 4), image_path=str(tmp_path / "Bengal_9.jpg"))
    with pytest.raises(Rejected) as error:
        read_image_bytes(record)
    assert error.value.reason == rec.MISSING_FILE and "Bengal_9.jpg: no such file" in error.value.message
    (tmp_path / "Bengal_9.jpg").write_bytes(b"")
    with pytest.raises(Rejected) as error:
        read_image_bytes(record)
    assert error.value.reason == rec.EMPTY_FILE
    assert read_image_bytes(SourceRecord("k", Provenance("tfds"), image_bytes=b"\x89PNG")) == b"\x89PNG"
