"""The crop cache: what earlier runs finished, so a rerun (or a resumed, killed run) skips it.

Layout under ``Workspace.crops``:
  settings.json           the CropSettings (and their key) the crops below were made with
  <key>/<path>.<h>.jpg    one crop per image (path relative to DATA; h: hash of the source's
                          content and the crop box, so a changed crop is a new file)
  <key>/_state.parquet    one record per finished image (consolidated at the end of a run)
  <key>/_parts/*.parquet  records written by workers batch by batch (merged into _state next run)
Every file is written atomically, so a killed run leaves whole files or none. A record counts
only while its source file is unchanged (same size and mtime as recorded with its content
hash) and its crop file exists; an image that failed is tried again on every run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from core.atomic import write_parquet_atomic, write_text_atomic
from core.faces import CropSettings
from core.manifest import PARQUET_ERRORS, crop_whole

log = logging.getLogger(__name__)

# one record: the manifest's geometry plus what the cache and the fallback step need
RECORD_COLUMNS = ("path", "src_size", "src_mtime", "src_hash", "w", "h", "status", "method",
                  "fx1", "fy1", "fx2", "fy2", "x1", "y1", "x2", "y2", "prob",
                  "candidates", "error", "note", "crop", "device")
# status: "crop" (crop written) | "pending" (no face yet: the fallback step decides) | "error"


def crop_name(key: str, path: str, src_hash: str, box) -> str:
    """Crop file relative to Workspace.crops, addressed by what it is made from: the settings
    (key), the source (its name keeps a.jpg and a.png apart; its content hash) and the box. A
    changed source or box gets a new file, so a decoded-crop cache never serves the old pixels."""
    made_from = f"{src_hash}|" + ",".join(f"{float(v):.1f}" for v in box)
    return f"{key}/{path}.{hashlib.sha1(made_from.encode()).hexdigest()[:12]}.jpg"


class CropCache:
    def __init__(self, crops_dir: Path, settings: CropSettings):
        self.root = Path(crops_dir)
        self.settings = settings
        self.key = settings.key
        self.dir = self.root / self.key
        self.parts = self.dir / "_parts"
        self.state_file = self.dir / "_state.parquet"

    @staticmethod
    def stored_settings(crops_dir: Path) -> CropSettings | None:
        """The settings the crops under ``crops_dir`` were made with (None: no crops yet)."""
        meta = Path(crops_dir) / "settings.json"
        return CropSettings(**json.loads(meta.read_text())["settings"]) if meta.is_file() else None

    def open(self) -> "CropCache":
        """Claim the crop folder for these settings; crops made with other settings are dropped."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "settings.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            if old.get("key") != self.key:
                new = json.loads(json.dumps(self.settings.as_dict()))   # tuples -> lists, as stored
                changed = {k: (old["settings"].get(k), v) for k, v in new.items()
                           if old["settings"].get(k) != v}
                what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                log.warning("crop settings changed (%s): the cached crops in %s were made with the "
                            "old settings and are discarded; every image is cropped again",
                            what, self.root / old["key"])
                shutil.rmtree(self.root / old["key"], ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps({"key": self.key, "settings": self.settings.as_dict()},
                                     indent=1), meta)
        return self

    def load(self, stats: pd.DataFrame) -> dict[str, dict]:
        """path -> latest record whose source matches ``stats`` (path, src_size, src_mtime)."""
        frames = [pd.read_parquet(self.state_file)] if self.state_file.is_file() else []
        for part in sorted(self.parts.glob("*.parquet"), key=lambda p: p.stat().st_mtime_ns):
            try:
                frames.append(pd.read_parquet(part))
            except PARQUET_ERRORS as exc:  # atomic writes make this unlikely; never trust a bad part
                log.warning("ignoring unreadable cache part %s (%s)", part, exc)
        if not frames:
            return {}
        recs = pd.concat(frames, ignore_index=True).drop_duplicates("path", keep="last")
        cur = stats.set_index("path")[["src_size", "src_mtime"]]
        recs = recs[recs["path"].isin(cur.index)]
        same = ((recs["src_size"].to_numpy() == cur.loc[recs["path"], "src_size"].to_numpy())
                & (recs["src_mtime"].to_numpy() == cur.loc[recs["path"], "src_mtime"].to_numpy()))
        # a failed image is tried again: its cause may lie outside the file (permissions, a mount,
        # a cloud placeholder not yet downloaded) where size and mtime do not change, and a retry
        # is cheap (decoding fails before the detector runs)
        recs = recs[same & (recs["status"] != "error").to_numpy()]
        has_crop = [c == "" or crop_whole(self.root / c) for c in recs["crop"]]   # a damaged crop is made again
        return {r["path"]: r for r in recs[has_crop].to_dict("records")}

    def write_part(self, name: str, records: list[dict]) -> None:
        write_parquet_atomic(records_frame(records), self.parts / f"{name}.parquet")

    def consolidate(self, records: list[dict]) -> None:
        """One state file for the next run; the parts it now holds are removed after it is safe."""
        before = list(self.parts.glob("*.parquet"))
        write_parquet_atomic(records_frame(records), self.state_file)
        for p in before:
            p.unlink(missing_ok=True)


def records_frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(records, columns=list(RECORD_COLUMNS))
    for c in ("path", "src_hash", "status", "method", "candidates", "error", "note", "crop", "device"):
        df[c] = df[c].fillna("").astype(str)
    for c in ("src_size", "src_mtime", "w", "h"):
        df[c] = df[c].fillna(-1).astype("int64")
    for c in ("fx1", "fy1", "fx2", "fy2", "x1", "y1", "x2", "y2", "prob"):
        df[c] = df[c].astype(float)
    return df
