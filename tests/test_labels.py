import numpy as np
import pytest

from core.labels import (ALL, HEADS, NUM_CLASSES, age_group, check_target, class_names, decode, encode,
                                 get_head, num_outputs, output_slices, target_heads)


def test_encode_decode_all_18_classes():
    seen = set()
    for m in range(3):
        for g in range(2):
            for a in range(3):
                c = int(encode(m, g, a))
                assert c == m * 6 + g * 3 + a
                assert tuple(int(x) for x in decode(c)) == (m, g, a)
                seen.add(c)
    assert seen == set(range(NUM_CLASSES))


def test_decode_arrays_and_range():
    labels = np.arange(18)
    m, g, a = decode(labels)
    assert np.array_equal(encode(m, g, a), labels)
    with pytest.raises(ValueError, match="0..17"):
        decode(18)


@pytest.mark.parametrize("age,old_from,expected", [
    (18, 60, 0), (29, 60, 0), (30, 60, 1), (58, 60, 1), (59, 60, 1), (60, 60, 2),
    (59, 59, 2), (58, 59, 1), (57, 57, 2), (56, 57, 1),
])
def test_age_group_boundary_is_a_setting(age, old_from, expected):
    assert age_group(age, old_from) == expected


def test_heads_table():
    assert [h.num_classes for h in HEADS.values()] == [3, 2, 3]
    assert len(class_names()) == 18 and class_names()[17] == "not_wear/female/>=60"
    with pytest.raises(ValueError, match="valid heads: mask, gender, age"):
        get_head("hair")


def test_a_joint_target_lays_every_head_side_by_side():
    assert [h.name for h in target_heads(ALL)] == ["mask", "gender", "age"]
    assert output_slices(ALL) == {"mask": slice(0, 3), "gender": slice(3, 5), "age": slice(5, 8)}
    assert num_outputs(ALL) == 8 and num_outputs("gender") == 2
    assert output_slices("age") == {"age": slice(0, 3)}
    with pytest.raises(ValueError, match="valid: mask, gender, age, all"):
        check_target("both")
