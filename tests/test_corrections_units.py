"""core/corrections.py on a small label table: what each correction does, the line each refused
row is named by with its fix, and the near-miss hint for an id a spreadsheet stripped of its zeros."""
import logging

import pandas as pd
import pytest

from core.corrections import _near, apply_corrections
from core.errors import DataError


def table() -> pd.DataFrame:
    """Two persons: 000123 (male, 40) with its normal and incorrect_mask images, 000200
    (female, 25) with a mask1 image only."""
    return pd.DataFrame({"person": ["000123", "000123", "000200"],
                         "kind": ["normal", "incorrect_mask", "mask1"],
                         "mask": [2, 1, 0], "gender": [0, 0, 1], "age": [40, 40, 25]})


def corrections(tmp_path, *rows: str):
    path = tmp_path / "corrections.csv"
    path.write_text("id,field,value,note\n" + "".join(r + "\n" for r in rows))
    return path


def test_each_field_is_applied_to_the_persons_rows_only_and_described(tmp_path, caplog):
    """gender (any case), age (a spreadsheet's 61.0 is 61) and a swap (':' or '|') change the
    named person's rows; the applied changes are in attrs and the log, in file order."""
    df = table()
    path = corrections(tmp_path, " 000123 , gender , FEMALE ,looks female", "000123,age,61.0,",
                       "000123,swap,normal|incorrect_mask,")
    with caplog.at_level(logging.INFO, logger="core.corrections"):
        fixed = apply_corrections(df, path)
    assert fixed["gender"].tolist() == [1, 1, 1] and fixed["age"].tolist() == [61, 61, 25]
    assert fixed["mask"].tolist() == [1, 2, 0]
    assert fixed.attrs["corrections"] == ["person 000123: gender male -> female", "person 000123: age 40 -> 61",
                                          "person 000123: swapped mask labels of normal and incorrect_mask"]
    assert [r.getMessage() for r in caplog.records] == [f"correction: {a}" for a in fixed.attrs["corrections"]]
    assert df.equals(table())   # the caller's table is left as it was


def test_a_gender_correction_back_to_male_names_the_old_gender(tmp_path):
    fixed = apply_corrections(table(), corrections(tmp_path, "000200,gender,male"))
    assert fixed["gender"].tolist() == [0, 0, 0]
    assert fixed.attrs["corrections"] == ["person 000200: gender female -> male"]


def test_every_bad_row_is_named_by_its_line_with_the_fix(tmp_path):
    """all refusals at once, in file order, each naming the file's line; nothing is applied."""
    path = corrections(tmp_path, "123,age,40", "000123,hair,red", "000123,gender,other", "000123,age,old",
                       "000123,age,200", "000123,swap,normal", "000123,swap,normal:mask9:mask1",
                       "000123,swap,normal:hat", "000123,swap,normal:mask1", "000123,swap,mask1:normal",
                       "000200,age,30")
    with pytest.raises(DataError) as err:
        apply_corrections(table(), path)
    assert err.value.problems == [
        f"{path} line 2: id '123' is not in train.csv; fix the id (train.csv has '000123': ids are text, "
        "leading zeros count)",
        f"{path} line 3: field 'hair' is not one of gender, age, swap",
        f"{path} line 4: gender 'other' is not one of male, female",
        f"{path} line 5: age 'old' is not a whole number; write the age in years",
        f"{path} line 6: age '200' is over 130; write the age in years",
        f"{path} line 7: swap 'normal' must be two image kinds like incorrect_mask:normal",
        f"{path} line 8: swap 'normal:mask9:mask1' must be two image kinds like incorrect_mask:normal",
        f"{path} line 9: swap 'normal:hat' must be two image kinds like incorrect_mask:normal",
        f"{path} line 10: person has no mask1 image",
        f"{path} line 11: person has no mask1 image",
    ]


def test_an_unknown_id_with_no_near_miss_gets_no_hint(tmp_path):
    with pytest.raises(DataError) as err:
        apply_corrections(table(), corrections(tmp_path, "999,age,40"))
    assert err.value.problems[0].endswith(": id '999' is not in train.csv; fix the id")


def test_the_near_miss_hint_lists_up_to_three_ids_that_differ_in_leading_zeros():
    """the first three in text order; the id itself and ids differing otherwise are not listed."""
    persons = {"0123", "00123", "000123", "0000123", "1230", "124"}
    assert _near("123", persons) == " (train.csv has '0000123', '000123', '00123': ids are text, leading zeros count)"
    assert _near("0123", {"0123", "123"}) == " (train.csv has '123': ids are text, leading zeros count)"
    assert _near("77", persons) == ""
    assert _near("123", {"X123", "x0123"}) == "" and _near("X123", {"123"}) == ""   # only zeros are stripped


def test_a_missing_corrections_file_names_its_columns(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.csv: file not found; columns are id,field,value\[,note\]"):
        apply_corrections(table(), tmp_path / "nothing.csv")
