"""core/csv_input.py: ages as people write them, the file line each row is named by, and the
refusals of a file that is missing, unreadable or has a wrong header (each naming the fix)."""
import pytest

from core.csv_input import parse_age, read_csv, record_lines
from core.errors import DataError


@pytest.mark.parametrize("text,age", [("35", 35), (" 35 ", 35), ("35.0", 35), ("35.", 35), ("0", 0),
                                      ("130", 130), ("007", 7)])
def test_whole_ages_are_read_in_years(text, age):
    assert parse_age(text) == (age, "")


@pytest.mark.parametrize("text", ["35.5", "-1", "forty", "", "3²", "1e2", ".5"])
def test_an_age_that_is_not_a_whole_number_is_refused_as_written(text):
    assert parse_age(text) == (None, f"age {text!r} is not a whole number; write the age in years")


def test_an_age_over_130_is_a_typo():
    assert parse_age("131") == (None, "age '131' is over 130; write the age in years")
    assert parse_age(" 131.0") == (None, "age ' 131.0' is over 130; write the age in years")


def test_each_record_is_named_by_the_line_it_starts_on(tmp_path):
    """blank and blank-looking lines are skipped, ',' is a record, a quoted field may span lines."""
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,2\n\n3,4\n  \n,\n"x\ny",5\n8,9\n')
    assert record_lines(path) == [2, 4, 6, 7, 9]
    table = read_csv(path, ("a", "b"), "fix it")
    assert table.index.tolist() == [2, 4, 6, 7, 9] and table["b"].tolist() == ["2", "4", "", "5", "9"]


def test_rows_pandas_and_the_csv_reader_count_differently_fall_back_to_their_position(tmp_path):
    """a line '""' is a row to pandas, not to the csv reader: the lines cannot be matched, so
    each row is named by its position below the header."""
    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,2\n""\n\n3,4\n')
    assert record_lines(path) == [2, 5]
    assert read_csv(path, ("a",), "fix it").index.tolist() == [2, 3, 4]


def test_cells_are_text_and_names_are_stripped(tmp_path):
    """ids keep their leading zeros; 'NA' and empty cells stay text; spaces around a name go."""
    path = tmp_path / "t.csv"
    path.write_text(" id , age\n007,NA\n,\n")
    table = read_csv(path, ("id", "age"), "fix it")
    assert list(table.columns) == ["id", "age"] and table.values.tolist() == [["007", "NA"], ["", ""]]


def test_a_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        read_csv(tmp_path / "t.csv", ("a",), "fix it")
    assert err.value.problems == [f"{tmp_path / 't.csv'}: file not found; fix it"]


@pytest.mark.parametrize("content,error", [(b"", "No columns to parse"), (b"a,b\n\xff\xfe,1\n", "codec can't decode")])
def test_an_unreadable_file_names_the_reason_and_the_fix(tmp_path, content, error):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_csv(path, ("a",), "fix it")
    [problem] = err.value.problems
    assert problem.startswith(f"{path}: not a readable CSV (") and error in problem and problem.endswith("); fix it")


def test_a_required_column_twice_is_refused_once_spaces_are_stripped(tmp_path):
    """'age' and 'age ', or 'id' repeated (pandas' id.1): which one holds the values is a guess;
    a repeated column the file need not have is let be."""
    path = tmp_path / "t.csv"
    path.write_text("id,age,age ,id,note,note\n1,2,3,4,5,6\n")
    with pytest.raises(DataError) as err:
        read_csv(path, ("id", "age"), "fix it")
    assert err.value.problems == [f"{path}: column(s) age, id appear twice in the header (spaces around a name "
                                  "do not count); keep one of each"]
    path.write_text("id,age,note,note\n1,2,3,4\n")
    assert read_csv(path, ("id", "age"), "fix it").index.tolist() == [2]


def test_missing_columns_are_named_with_what_the_header_has_and_must_be(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,x\n1,2\n")
    with pytest.raises(DataError) as err:
        read_csv(path, ("id", "age", "path"), "fix it")
    assert err.value.problems == [f"{path}: missing column(s) age, path (has: id, x); the header must be id,age,path"]
