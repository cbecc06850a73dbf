"""kotune split: stratified by category, seeded, group-aware augmentation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import leftover_temp_files, read_jsonl
from kotune.data.split import augment, stratified_split
from kotune.records import Record, write_records

TOPICS = ["청년월세", "전세사기 피해", "국민취업지원제도", "기초연금", "근로장려금", "부모급여", "주거급여", "긴급복지"]
CATEGORY_SIZES = {"정의": 8, "수치": 14, "기관": 6, "법령": 4, "산업": 2, "개요": 1}


def make_records() -> list[Record]:
    records = []
    for cat, n in CATEGORY_SIZES.items():
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            records.append(Record(
                instruction=f"{topic} 제도의 {cat} 관련 질문 {i + 1}번은 무엇인가요?",
                output=f"{topic} 제도는 {cat} 측면에서 {i + 1}번째로 설명되는 내용을 담고 있습니다.",
                category=cat, difficulty=("초급", "중급", "고급")[i % 3], source="guide.txt",
            ))
    return records


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "clean.jsonl"
    write_records(path, make_records())
    return path


def split_files(cli, data: Path, folder: Path, *opts: str) -> tuple[list[dict], list[dict], bytes, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    res = cli(["split", data, "--train", train, "--test", test, *opts])
    assert res.code == 0, res.err
    return read_jsonl(train), read_jsonl(test), train.read_bytes(), test.read_bytes()


def test_every_category_with_two_or_more_records_is_in_test(tmp_path: Path, cli, data_file: Path) -> None:
    train, test, _, _ = split_files(cli, data_file, tmp_path / "out", "--test-size", "0.1")

    test_cats = Counter(r["category"] for r in test)
    for cat, n in CATEGORY_SIZES.items():
        if n >= 2:
            assert test_cats[cat] >= 1, cat
            assert any(r["category"] == cat for r in train), cat  # and never all of it
    assert "개요" not in test_cats  # a lone record stays in train
    # roughly the asked share: 10% of each larger category
    assert test_cats["수치"] == round(14 * 0.1)


def test_split_is_a_partition_in_input_order(tmp_path: Path, cli, data_file: Path) -> None:
    train, test, _, _ = split_files(cli, data_file, tmp_path / "out", "--test-size", "0.25")
    original = [r["id"] for r in read_jsonl(data_file)]

    assert sorted(r["id"] for r in train + test) == sorted(original)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert [r["id"] for r in train] == [i for i in original if i in {r["id"] for r in train}]
    assert [r["id"] for r in test] == [i for i in original if i in {r["id"] for r in test}]


def test_same_seed_same_files_other_seed_other_split(tmp_path: Path, cli, data_file: Path) -> None:
    _, test_a, train_bytes_a, test_bytes_a = split_files(cli, data_file, tmp_path / "a", "--seed", "7", "--test-size", "0.3")
    _, _, train_bytes_b, test_bytes_b = split_files(cli, data_file, tmp_path / "b", "--seed", "7", "--test-size", "0.3")
    _, test_c, _, _ = split_files(cli, data_file, tmp_path / "c", "--seed", "8", "--test-size", "0.3")

    assert (train_bytes_a, test_bytes_a) == (train_bytes_b, test_bytes_b)
    assert {r["id"] for r in test_a} != {r["id"] for r in test_c}
    assert Counter(r["category"] for r in test_a) == Counter(r["category"] for r in test_c)  # same strata sizes


def test_augment_adds_variants_to_train_without_leaking_groups(tmp_path: Path, cli, data_file: Path) -> None:
    train, test, _, _ = split_files(cli, data_file, tmp_path / "out", "--augment", "3", "--test-size", "0.2")
    originals = read_jsonl(data_file)

    variants = [r for r in train if "#a" in r["id"]]
    plain_train = [r for r in train if "#a" not in r["id"]]
    assert len(variants) == 3 * len(plain_train)
    assert all("#a" not in r["id"] for r in test)  # test is not augmented by default
    assert len(plain_train) + len(test) == len(originals)

    def group(rid: str) -> str:
        return rid.split("#a")[0]

    assert not {group(r["id"]) for r in train} & {group(r["id"]) for r in test}
    by_id = {r["id"]: r for r in originals}
    for v in variants:
        orig = by_id[group(v["id"])]
        assert v["augmented_from"] == orig["id"]
        assert v["output"] == orig["output"] and v["category"] == orig["category"]
        assert v["instruction"] != orig["instruction"] and orig["instruction"] in v["instruction"]


def test_augmented_test_keeps_variants_on_their_side(tmp_path: Path, cli, data_file: Path) -> None:
    train, test, _, _ = split_files(cli, data_file, tmp_path / "out", "--augment", "2", "--augment-test")

    train_groups = {r["id"].split("#a")[0] for r in train}
    test_groups = {r["id"].split("#a")[0] for r in test}
    assert any("#a" in r["id"] for r in test)
    assert not train_groups & test_groups


def test_presplit_variants_stay_with_their_original() -> None:
    records = augment(make_records(), 2, seed=3)
    train, test = stratified_split(records, test_size=0.3, seed=3)

    assert not {r.group for r in train} & {r.group for r in test}
    assert len(train) + len(test) == len(records)


def test_one_record_per_category_still_gives_a_test_set() -> None:
    records = [Record(instruction=f"{t} 신청 자격은 무엇인가요?", output=f"{t}의 신청 자격은 안내문에 정해져 있습니다.",
                      category=t) for t in TOPICS]
    train, test = stratified_split(records, test_size=0.25, seed=1)
    assert len(test) == 2 and len(train) == 6


@pytest.mark.parametrize("size", ["0", "1", "1.0", "1.5", "-0.1"])
def test_test_size_must_be_strictly_between_0_and_1(tmp_path: Path, cli, data_file: Path, size: str) -> None:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    res = cli(["split", data_file, "--train", train, "--test", test, "--test-size", size])

    assert res.code == 2
    assert res.err_lines == [f"error: --test-size must be in (0, 1), got {float(size)}"]
    assert not train.exists() and not test.exists()
    assert leftover_temp_files(tmp_path) == []


def test_a_single_record_cannot_be_split(tmp_path: Path, cli) -> None:
    data = tmp_path / "one.jsonl"
    write_records(data, make_records()[:1])
    res = cli(["split", data, "--train", tmp_path / "tr.jsonl", "--test", tmp_path / "te.jsonl"])
    assert res.code == 2 and res.err_lines == [f"error: {data}: need at least two records to split"]


def test_group_by_keeps_records_sharing_a_field_on_one_side() -> None:
    # Three questions about each of 12 paragraphs (question generation): a paragraph never straddles.
    records = [Record(instruction="문단을 읽고 질문을 만드세요.", input=f"문단 {p}: 내용 {p}.", output=f"문단 {p}의 질문 {k}은 무엇인가?",
                      category="역사" if p % 2 else "과학", id=f"p{p}q{k}") for p in range(12) for k in range(3)]
    train, test = stratified_split(records, test_size=0.25, seed=7, group_by="input")
    assert train and test and len(train) + len(test) == len(records)
    assert not {r.input for r in train} & {r.input for r in test}
    assert all(sum(r.input == t.input for r in test) == 3 for t in test)
    plain_train, plain_test = stratified_split(records, test_size=0.25, seed=7)
    assert {r.input for r in plain_train} & {r.input for r in plain_test}  # without it, paragraphs leak
