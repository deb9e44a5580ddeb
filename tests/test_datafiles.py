"""Tests for scans.datafiles: reading prompt files and anchor pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from scans.datafiles import PromptFile, read_pairs, read_prompts, shipped_anchors
from scans.errors import ScansError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, items: list[object]) -> Path:
    return _write(path, "".join(json.dumps(item) + "\n" for item in items))


def _raises(*needles: str, **kwargs: object):
    """Call read_prompts and check the error is one line with a fix and the given fragments."""
    with pytest.raises(ScansError) as info:
        read_prompts(**kwargs)  # type: ignore[arg-type]
    _check_message(str(info.value), *needles)
    return str(info.value)


def _check_message(message: str, *needles: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert "fix:" in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# ---------------------------------------------------------------------------------------
# Formats


def test_txt_one_prompt_per_non_empty_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "  first prompt  \n\n second\t\n\n   \nthird\n")
    result = read_prompts(path)
    assert isinstance(result, PromptFile)
    assert result.prompts == ["first prompt", "second", "third"]
    assert result.labels is None
    assert result.path == str(path)


def test_txt_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffalpha\r\nbeta\r\n".encode())
    assert read_prompts(str(path)).prompts == ["alpha", "beta"]


def test_csv_auto_prompt_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'id,prompt,other\n1,"Hello, world",x\n2,How are you?,y\n')
    assert read_prompts(path).prompts == ["Hello, world", "How are you?"]


def test_csv_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffprompt,label\nfirst,a\nsecond,b\n".encode())
    result = read_prompts(path, label_column="label")
    assert result.prompts == ["first", "second"]
    assert result.labels == ["a", "b"]


def test_csv_trailing_newlines_in_cells_are_stripped(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'text\n"line one\n"\n"  line two\n\n"\n')
    assert read_prompts(path).prompts == ["line one", "line two"]


def test_csv_keeps_literal_na_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,label\nNA,None\nnull,n/a\n")
    result = read_prompts(path, label_column="label")
    assert result.prompts == ["NA", "null"]
    assert result.labels == ["None", "n/a"]


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.tsv", "question\tanswer\nWhat, exactly?\t42\nWhy?\t7\n")
    assert read_prompts(path).prompts == ["What, exactly?", "Why?"]


def test_uppercase_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "P.CSV", "prompt\nhi\n")
    assert read_prompts(path).prompts == ["hi"]


def test_json_list_of_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps(["a ", " b", "c\n"]))
    assert read_prompts(path).prompts == ["a", "b", "c"]


def test_json_list_of_objects(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps([{"goal": "g1", "n": 1}, {"goal": "g2", "n": 2}]))
    assert read_prompts(path).prompts == ["g1", "g2"]


def test_json_object_with_single_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps({"name": "set", "prompts": ["x", "y"]}))
    assert read_prompts(path).prompts == ["x", "y"]


def test_json_object_with_single_list_of_objects(tmp_path: Path) -> None:
    data = {"data": [{"instruction": "do a", "cat": "c1"}, {"instruction": "do b", "cat": "c2"}]}
    path = _write(tmp_path / "p.json", json.dumps(data))
    result = read_prompts(path, label_column="cat")
    assert result.prompts == ["do a", "do b"]
    assert result.labels == ["c1", "c2"]


def test_json_object_of_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps({"prompt": ["p1", "p2"], "label": [0, 1]}))
    result = read_prompts(path, label_column="label")
    assert result.prompts == ["p1", "p2"]
    assert result.labels == ["0", "1"]


def test_jsonl_strings_and_objects(tmp_path: Path) -> None:
    strings = _jsonl(tmp_path / "s.jsonl", ["one", "two"])
    assert read_prompts(strings).prompts == ["one", "two"]
    objects = _write(tmp_path / "o.jsonl", '{"query": "q1"}\n\n{"query": "q2 \\n"}\n')
    assert read_prompts(objects).prompts == ["q1", "q2"]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"id": [1, 2, 3], "content": ["c1\n", "c2", None], "label": ["x", "y", "z"]}).to_parquet(
        path
    )
    result = read_prompts(path, label_column="label")
    assert result.prompts == ["c1", "c2"]
    assert result.labels == ["x", "y"]
    assert result.dropped == 1


# ---------------------------------------------------------------------------------------
# Column choice, labels, empty rows


def test_candidate_order_prefers_prompt_over_text(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"text": "t", "prompt": "p"}])
    assert read_prompts(path).prompts == ["p"]


def test_candidate_capitalised_question(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "Question,Answer\nWhy?,Because\n")
    assert read_prompts(path).prompts == ["Why?"]


def test_single_string_column_is_used(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "id,body,score\n1,first,0.5\n2,second,0.7\n")
    assert read_prompts(path).prompts == ["first", "second"]


def test_single_string_column_in_json_objects(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"n": 1, "msg": "hello"}, {"n": 2, "msg": "bye"}])
    assert read_prompts(path).prompts == ["hello", "bye"]


def test_explicit_text_column_overrides_candidates(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,rewritten\norig1,new1\norig2,new2\n")
    assert read_prompts(path, text_column="rewritten").prompts == ["new1", "new2"]


def test_text_column_ignored_for_plain_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "a\nb\n")
    assert read_prompts(path, text_column="prompt").prompts == ["a", "b"]


def test_labels_are_stripped_strings(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,label,score\na, harmful ,1\nb,harmless\t,2\n")
    result = read_prompts(path, label_column="label")
    assert result.labels == ["harmful", "harmless"]
    numeric = read_prompts(path, label_column="score")
    assert numeric.labels == ["1", "2"]


def test_labels_follow_kept_rows(tmp_path: Path) -> None:
    items = [
        {"prompt": "a", "y": "1"},
        {"prompt": "  ", "y": "2"},
        {"prompt": None},
        {"prompt": "d", "y": "4"},
    ]
    result = read_prompts(_jsonl(tmp_path / "p.jsonl", items), label_column="y")
    assert result.prompts == ["a", "d"]
    assert result.labels == ["1", "4"]
    assert result.dropped == 2


def test_empty_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'prompt,x\nkeep,1\n,2\n"   ",3\nalso,4\n')
    result = read_prompts(path)
    assert result.prompts == ["keep", "also"]
    assert result.dropped == 2


def test_json_null_and_empty_strings_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps(["a", None, "", "b"]))
    result = read_prompts(path)
    assert result.prompts == ["a", "b"]
    assert result.dropped == 2


# ---------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path: Path) -> None:
    _raises("nope.csv", "does not exist", path=tmp_path / "nope.csv")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    _raises("directory", path=folder)


def test_unknown_extension(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.xlsx", "whatever")
    message = _raises("p.xlsx", ".xlsx", path=path)
    for ext in (".txt", ".csv", ".tsv", ".json", ".jsonl", ".parquet"):
        assert ext in message


def test_no_extension(tmp_path: Path) -> None:
    _raises("no extension", path=_write(tmp_path / "prompts", "a\n"))


@pytest.mark.parametrize("name", ["e.txt", "e.csv", "e.tsv", "e.json", "e.jsonl", "e.parquet"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    _raises(name, "empty", path=_write(tmp_path / name, ""))


@pytest.mark.parametrize("name", ["w.txt", "w.json", "w.jsonl"])
def test_whitespace_only_file(tmp_path: Path, name: str) -> None:
    _raises(name, "empty", path=_write(tmp_path / name, "\n  \n\t\n"))


def test_csv_header_only_has_no_prompts(tmp_path: Path) -> None:
    _raises("no prompts", path=_write(tmp_path / "h.csv", "prompt,label\n"))


def test_all_rows_empty(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", 'prompt,x\n,1\n"  ",2\n')
    _raises("no prompts", "all 2 rows are empty", path=path)


def test_json_empty_list(tmp_path: Path) -> None:
    _raises("no prompts", path=_write(tmp_path / "p.json", "[]"))


def test_malformed_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json", '[\n  "a",\n  "b"\n  "c"\n]\n')
    _raises("bad.json", "not valid JSON", "line 4", path=path)


def test_json_that_is_really_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path / "lines.json", '{"prompt": "a"}\n{"prompt": "b"}\n')
    _raises(".jsonl", path=path)


def test_json_bad_shapes(tmp_path: Path) -> None:
    _raises("not a list", path=_write(tmp_path / "n.json", "42"))
    _raises("no list value", path=_write(tmp_path / "o.json", '{"a": 1}'))
    _raises("list values", path=_write(tmp_path / "t.json", '{"a": [1], "b": [1, 2]}'))
    _raises("item 2", "a number", path=_write(tmp_path / "i.json", '["a", 3]'))
    _raises("mixes strings", path=_write(tmp_path / "m.json", '["a", {"prompt": "b"}]'))


def test_malformed_jsonl_reports_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n')
    _raises("line 3", "bad.jsonl", "not valid JSON", path=path)


def test_jsonl_non_object_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", '"a"\n[1, 2]\n')
    _raises("line 2", "a list", path=path)


def test_malformed_csv(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", "prompt,label\na,b\nc,d,e,f\n")
    _raises("bad.csv", "not valid CSV", path=path)


def test_non_utf8_file(tmp_path: Path) -> None:
    for name in ("latin.txt", "latin.csv"):
        path = tmp_path / name
        path.write_bytes("prompt\ncaf\xe9 au lait\n".encode("latin-1"))
        _raises("UTF-8", path=path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.parquet", "this is not parquet at all")
    _raises("bad.parquet", "parquet", path=path)


def test_missing_text_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "a,b\nx,y\n")
    _raises("'text'", "columns: a, b", "--text-column NAME", path=path, text_column="text")


def test_ambiguous_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "title,body\nx,y\n")
    _raises("p.csv", "columns: title, body", "fix: pass --text-column NAME", path=path)


def test_no_string_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "a,b\n1,2\n")
    _raises("no text column", "--text-column", path=path)


def test_missing_label_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,kind\nx,y\n")
    _raises("'label'", "columns: prompt, kind", "--label-column", path=path, label_column="label")


def test_label_column_with_txt(tmp_path: Path) -> None:
    _raises(".txt", "--label-column", path=_write(tmp_path / "p.txt", "a\n"), label_column="label")


def test_label_column_with_plain_strings(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", ["a", "b"])
    _raises("plain strings", "--label-column", path=path, label_column="label")


def test_missing_label_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,label\na,x\nb,\n")
    _raises("row 2", "no label", path=path, label_column="label")


def test_non_string_text_cell_names_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": 42}])
    _raises("line 2", "a number", "'prompt'", path=path)


def test_numeric_text_column_in_csv(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", "prompt,x\n1,a\n2,b\n")
    _raises("row 1", "a number", path=path)


def test_errors_never_leak_multiline_library_messages(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1" + b"\n" * 50 + b"garbage\nmore\n")
    _raises("parquet", path=path)


# ---------------------------------------------------------------------------------------
# Pairs


def test_read_pairs(tmp_path: Path) -> None:
    items = [
        {"id": 1, "harmful": " bad one ", "harmless": "good one", "category": "x"},
        {"id": 2, "harmful": "bad two", "harmless": "good two\n", "category": "y"},
    ]
    harmful, harmless = read_pairs(_jsonl(tmp_path / "pairs.jsonl", items))
    assert harmful == ["bad one", "bad two"]
    assert harmless == ["good one", "good two"]


def _pairs_error(path: Path, *needles: str) -> None:
    with pytest.raises(ScansError) as info:
        read_pairs(path)
    _check_message(str(info.value), *needles)


def test_read_pairs_missing_key_reports_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", '{"harmful": "a", "harmless": "b"}\n{"harmful": "c"}\n')
    _pairs_error(path, "line 2", "'harmless'", "pairs.jsonl")


def test_read_pairs_errors(tmp_path: Path) -> None:
    _pairs_error(tmp_path / "missing.jsonl", "does not exist")
    _pairs_error(_write(tmp_path / "bad.jsonl", '{"harmful": "a", "harmless": "b"}\n{oops\n'), "line 2")
    _pairs_error(_write(tmp_path / "list.jsonl", '["a", "b"]\n'), "line 1", "not an object")
    _pairs_error(_write(tmp_path / "empty.jsonl", '{"harmful": "", "harmless": "b"}\n'), "'harmful'")
    _pairs_error(_write(tmp_path / "blank.jsonl", "\n\n"), "empty")


def test_shipped_anchors() -> None:
    harmful, harmless = shipped_anchors()
    assert len(harmful) == len(harmless) == 128
    assert all(h.strip() for h in harmful)
    assert all(h.strip() for h in harmless)
    assert all(a != b for a, b in zip(harmful, harmless))
    assert all(h == h.strip() for h in harmful + harmless)
