"""The crop files are checked once per study, by its driver: a trial (one per fold model, on
shared storage each crop read is a network round trip) opens the decoded crops it names."""
import shutil

import pytest

from core.errors import DataError
from core.workspace import Workspace
from trainables.data import crop_cache, usable_train_rows


def test_trials_open_the_crops_their_study_checked_without_reading_each_file(crops_ws, tmp_path):
    _, src = crops_ws
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    shutil.copytree(src.crops, ws.crops)   # a private copy: one crop is cut below
    ws.make()
    crops = usable_train_rows(ws)["crop"].tolist()
    checked = crop_cache(ws, crops, 24)                 # the driver, before Ray starts
    (ws.crops / crops[0]).write_bytes((ws.crops / crops[0]).read_bytes()[:100])   # cut after the check
    again = crop_cache(ws, crops, 24, checked=True)     # a trial: no file read, the same memmap
    assert again.filename == checked.filename and (again == checked).all()
    with pytest.raises(DataError, match="cut short"):   # unchecked (a new study's driver): found
        crop_cache(ws, crops, 24)
