"""Reading classification data: label maps, checks with counts, splitting, tokenizing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.tiny import write_jsonl
from tests.helpers.tiny_cls import build_bert_tokenizer, sentiment_rows, topic_rows
from tunesmith.config.schema import ClassificationConfig, DataConfig
from tunesmith.data.classification import (
    assign_labels,
    build_label_space,
    prepare_classification,
    read_records,
    stratified_split,
)
from tunesmith.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tok():
    return build_bert_tokenizer()


def _prep(tmp_path: Path, tok, train_rows, val_rows=None, data=None, **ccfg):
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    val = write_jsonl(tmp_path / "val.jsonl", val_rows) if val_rows is not None else None
    dcfg = DataConfig(train=str(train), validation=str(val) if val else None, **(data or {}))
    return prepare_classification(dcfg, ClassificationConfig(**ccfg), tok)


def test_integer_labels_give_numeric_names_and_ids(tmp_path: Path, tok) -> None:
    data = _prep(tmp_path, tok, sentiment_rows(10), sentiment_rows(4, 1))
    assert data.labels.names == ["0", "1"]
    assert {e.label for e in data.train} == {0, 1}
    assert data.stats["train"].class_counts == {"0": 5, "1": 5}
    assert all(e.input_ids[0] == tok.cls_token_id and e.input_ids[-1] == tok.sep_token_id
               for e in data.train)


def test_label_names_from_config_index_integer_labels(tmp_path: Path, tok) -> None:
    data = _prep(tmp_path, tok, sentiment_rows(10), labels=["negative", "positive"])
    assert data.labels.id2label == {0: "negative", 1: "positive"}
    assert data.labels.label2id == {"negative": 0, "positive": 1}


def test_string_labels_are_sorted_and_validation_maps_to_the_same_ids(tmp_path: Path, tok
                                                                      ) -> None:
    data = _prep(tmp_path, tok, sentiment_rows(10, string_labels=True),
                 sentiment_rows(6, 1, string_labels=True))
    assert data.labels.names == ["negative", "positive"]
    assert Counter(e.label for e in data.validation) == {0: 3, 1: 3}


def test_missing_labels_are_counted_and_the_first_is_located(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(10)
    del rows[3]["label"]
    rows[6]["label"] = None
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows)
    e = exc.value
    assert "2 of 10 rows" in e.what and "missing label" in e.what
    assert e.where.endswith("train.jsonl:4 field `label`")
    assert e.got == "(no such field)"


def test_list_label_without_multi_label_suggests_it(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(6)
    rows[2]["label"] = [0, 1]
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows)
    assert exc.value.where.endswith("train.jsonl:3 field `label`")
    assert exc.value.got == [0, 1]
    assert "multi_label" in exc.value.fix


def test_unseen_validation_class_is_an_error_with_counts(tmp_path: Path, tok) -> None:
    val = sentiment_rows(6, 1, string_labels=True)
    val[1]["label"] = "neutral"
    val[4]["label"] = "neutral"
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, sentiment_rows(10, string_labels=True), val)
    e = exc.value
    assert "2 validation rows" in e.what and "'neutral' ×2" in e.what
    assert e.where.endswith("val.jsonl:2 field `label`") and e.got == "neutral"


def test_label_outside_configured_names_is_an_error(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(6)
    rows[5]["label"] = 7
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows, labels=["negative", "positive"])
    assert "classification.labels" in exc.value.what and exc.value.got == 7
    assert exc.value.where.endswith("train.jsonl:6 field `label`")


def test_single_class_training_set_is_an_error(tmp_path: Path, tok) -> None:
    rows = [r for r in sentiment_rows(10) if r["label"] == 1]
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows)
    assert "single class" in exc.value.what
    assert exc.value.got == {"1": 5}


def test_empty_texts_are_dropped_with_a_counted_warning(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(10)
    rows[0]["text"] = "   "
    rows[1]["text"] = ""
    data = _prep(tmp_path, tok, rows)
    assert len(data.train) == 8 and data.stats["train"].empty_text == 2
    assert any("2 of 10 training rows have an empty text" in w for w in data.warnings)


def test_all_empty_texts_or_a_wrong_text_field_are_errors(tmp_path: Path, tok) -> None:
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, sentiment_rows(4), text_field="sentence")
    assert "4 of 4 rows" in exc.value.what and "missing text" in exc.value.what
    assert exc.value.where.endswith("train.jsonl:1 field `sentence`")
    rows = [{"text": 5, "label": 0}, {"text": "good", "label": 1}]
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows)
    assert "text not a string" in exc.value.what and exc.value.got == 5


def test_imbalance_and_untrained_class_warnings(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(24)
    rows = [r for r in rows if r["label"] == 1] + [r for r in rows if r["label"] == 0][:1]
    data = _prep(tmp_path, tok, rows, labels=["negative", "positive", "mixed"])
    text = " ".join(data.warnings)
    assert "1 of 3 classes have no training example (mixed)" in text
    assert "imbalanced classes" in text and "class_weights" in text
    quiet = _prep(tmp_path, tok, rows, class_weights="balanced")
    assert not any("imbalanced" in w for w in quiet.warnings)


def test_mixed_names_and_integers_are_rejected(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(6)
    rows[0]["label"] = "great"
    with pytest.raises(DataError) as exc:
        _prep(tmp_path, tok, rows)
    assert "mix integers and names" in exc.value.what


def test_csv_digit_strings_are_integers(tmp_path: Path, tok) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\ngood film,1\nbad film,0\nnice,1\nawful,0\n", encoding="utf-8")
    data = prepare_classification(DataConfig(train=str(path)), ClassificationConfig(), tok)
    assert data.labels.names == ["0", "1"] and [e.label for e in data.train] == [1, 0, 1, 0]


def test_multi_label_lists_and_separators(tmp_path: Path, tok) -> None:
    data = _prep(tmp_path, tok, topic_rows(20), label_field="labels", multi_label=True)
    assert data.labels.names == ["food", "music", "sport"]
    assert all(len(e.label) == 3 and set(e.label) <= {0, 1} for e in data.train)
    rows = [{"text": "ball song", "labels": "sport|music"}, {"text": "soup", "labels": "food"},
            {"text": "the film", "labels": ""}]
    # an empty string is a missing label; an empty list means "no label"
    with pytest.raises(DataError, match="missing label"):
        _prep(tmp_path, tok, rows, label_field="labels", multi_label=True, label_separator="|")
    rows[2]["labels"] = []
    data = _prep(tmp_path, tok, rows, label_field="labels", multi_label=True,
                 label_separator="|")
    assert data.labels.names == ["food", "music", "sport"]
    assert [e.label for e in data.train] == [[0, 1, 1], [1, 0, 0], [0, 0, 0]]


def test_stratified_split_keeps_class_proportions(tmp_path: Path) -> None:
    rows = sentiment_rows(40)[:30] + [r for r in sentiment_rows(40) if r["label"] == 0][:10]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    ccfg = ClassificationConfig()
    recs, _ = read_records(str(path), ccfg)
    space = build_label_space(recs, ccfg)
    assign_labels(recs, space, ccfg, "training")
    train, val = stratified_split(recs, 0.25, 0, False)
    assert len(train) + len(val) == 40
    assert Counter(r.label for r in val) == {0: 6, 1: 4}  # 25 % of 25 and of 15, rounded
    assert not {r.where for r in train} & {r.where for r in val}


def test_val_split_is_used_without_a_validation_file(tmp_path: Path, tok) -> None:
    data = _prep(tmp_path, tok, sentiment_rows(20), data={"val_split": 0.2})
    assert len(data.validation) == 4 and len(data.train) == 16
    assert Counter(e.label for e in data.validation) == {0: 2, 1: 2}


def test_long_texts_are_truncated_or_dropped_and_counted(tmp_path: Path, tok) -> None:
    rows = sentiment_rows(10)
    rows[0]["text"] = " ".join(["good"] * 40)
    data = _prep(tmp_path, tok, rows, max_length=16)
    assert data.stats["train"].truncated == 1 and len(data.train) == 10
    assert max(len(e.input_ids) for e in data.train) == 16
    assert data.train[0].input_ids[-1] == tok.sep_token_id
    dropped = _prep(tmp_path, tok, rows, max_length=16, data={"truncation": "drop"})
    assert dropped.stats["train"].dropped_too_long == 1 and len(dropped.train) == 9


def test_text_pairs_get_token_type_ids(tmp_path: Path, tok) -> None:
    rows = [{"premise": "the film", "hypothesis": "good film", "label": i % 2} for i in range(4)]
    data = _prep(tmp_path, tok, rows, text_field="premise", text_pair_field="hypothesis")
    e = data.train[0]
    assert e.token_type_ids is not None and set(e.token_type_ids) == {0, 1}
    assert e.input_ids.count(tok.sep_token_id) == 2


def test_configured_labels_must_be_distinct() -> None:
    from tunesmith.data.classification import Record

    with pytest.raises(ConfigError):
        build_label_space([Record("x", None, 0, "f:1")],
                          ClassificationConfig(labels=["a", "a"]))
