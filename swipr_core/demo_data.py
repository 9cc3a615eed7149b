"""A small Swipr-shaped dataset to try the whole pipeline without the real photos.

YES pictures are warm with a bright disc, NO pictures cool with dark stripes or squares, with
noise and jitter, so a tiny CNN learns them in a couple of epochs at 32-48 px. The metadata
exercises every label rule and every exclusion reason, at the real data's skew (~75% NO).
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from swipr_core.errors import SwiprError
from swipr_core.labels import LabelRules

# Label codes as the face-detection step of the original notebook wrote them.
LABEL_OK = 0  # a face was found
LABEL_NO_FACE = 1  # no face found
LABEL_ROTATION_FAILED = 2  # no face, and rotating the picture didn't help
LABEL_INVALID = 9  # not a usable photo (screenshot, broken download): drop the row
LABEL_CODES = {LABEL_OK: "ok", LABEL_NO_FACE: "no face", LABEL_ROTATION_FAILED:
               "rotation didn't help", LABEL_INVALID: "invalid"}

YES_DIRS = ("insta/ok", "Tinder/yes")
NO_DIRS = ("insta/no", "Tinder/no")
OUTSIDE_DIR = "misc"  # under neither: counted as outside_dirs
DEMO_RULES = LabelRules(
    yes_dirs=YES_DIRS, no_dirs=NO_DIRS, invalid_labels=(LABEL_INVALID,),
    fail_labels=(LABEL_NO_FACE, LABEL_ROTATION_FAILED), fail_on_male=True,
    min_people=1, max_people=1, min_age=18, max_age=35,
)
MIN_IMAGES = 40  # below this not every rule and exclusion reason gets a row
MARKER = ".swipr-demo-data"  # lets a second run overwrite a demo dataset, and nothing else

# kind -> (rows per 100, where it lives); every kind gets at least one row.
_KINDS = {
    "yes": (21, "yes"), "no": (50, "no"),
    "fail_no_face": (2, "yes"), "fail_rotation": (2, "yes"), "male": (3, "yes"),
    "nobody": (2, "yes"), "group": (3, "yes"), "too_young": (2, "yes"), "too_old": (2, "yes"),
    "outside": (4, "outside"), "invalid_flag": (3, "any"), "invalid_label": (3, "any"),
    "missing": (2, "any"), "truncated": (1, "any"), "garbage": (1, "any"),
}


def write_demo_data(out_dir: Path, n_images: int = 240, image_px: int = 64, seed: int = 0) -> Path:
    """Write `out_dir/pics.db` and its images; return the database path (images under out_dir)."""
    out_dir = Path(out_dir)
    if not isinstance(n_images, int) or n_images < MIN_IMAGES:
        raise SwiprError(f"demo data: n_images (--images) must be at least {MIN_IMAGES}, "
                         f"but got {n_images!r}")
    if not isinstance(image_px, int) or not 16 <= image_px <= 1024:
        raise SwiprError(f"demo data: image_px must be between 16 and 1024, but got {image_px!r}")
    _prepare_dir(out_dir)
    rng = np.random.default_rng(seed)
    rows = []
    kinds = _kind_list(n_images, rng)
    for index, kind in enumerate(kinds):
        row, appearance = _metadata(kind, index, rng)
        rows.append(row)
        if kind != "missing":
            _write_image(out_dir / row[0], kind, appearance, image_px, rng)
    rows += _table_mistakes(rows[kinds.index("yes")])
    database = out_dir / "pics.db"
    partial = out_dir / "pics.db.partial"
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as connection:
        connection.execute("CREATE TABLE pics (path TEXT, label INTEGER, invalid INTEGER, "
                           "ages TEXT, num_people INTEGER, male_present INTEGER)")
        connection.executemany("INSERT INTO pics VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.close()
    os.replace(partial, database)  # a reader never sees half a database
    return database


def _table_mistakes(a_yes_row: tuple) -> list[tuple]:
    """Rows a real pics table holds too: a path listed twice (kept once), one that leads out of
    the image root, and one listed as both YES and NO. Appended last, with no random draws,
    so every other row, image and the split stay as they were."""
    yes = ("insta/ok/img_listed_twice.jpg", LABEL_OK, 0, "25", 1, 0)
    return [a_yes_row, (f"{YES_DIRS[0]}/../../outside_the_root.jpg", LABEL_OK, 0, "25", 1, 0),
            yes, yes[:5] + (1,)]


def _prepare_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SwiprError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise SwiprError(f"{out_dir}: directory is not empty and holds no demo dataset; "
                             "choose a new or empty directory")
        for top in {folder.split("/")[0] for folder in YES_DIRS + NO_DIRS} | {OUTSIDE_DIR}:
            shutil.rmtree(out_dir / top, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by swipr demo-data; safe to overwrite\n")


def _kind_list(n_images: int, rng: np.random.Generator) -> list[str]:
    counts = {kind: max(1, round(share * n_images / 100)) for kind, (share, _) in _KINDS.items()}
    counts["no"] += n_images - sum(counts.values())  # rounding lands on the biggest class
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rng.shuffle(kinds)
    return kinds


def _metadata(kind: str, index: int, rng: np.random.Generator) -> tuple[tuple, str]:
    """The db row for one picture, and whether it should look YES or NO."""
    where = _KINDS[kind][1]
    if where == "any":
        where = str(rng.choice(["yes", "no"]))
    folder = {"yes": YES_DIRS, "no": NO_DIRS, "outside": (OUTSIDE_DIR,)}[where]
    path = f"{folder[index % len(folder)]}/img_{index:05d}.jpg"
    label, invalid, people, male = LABEL_OK, 0, 1, 0
    ages = _ages(rng, [int(rng.integers(18, 36))])
    if kind == "fail_no_face":
        label, people, ages = LABEL_NO_FACE, 0, None
    elif kind == "fail_rotation":
        label, people, ages = LABEL_ROTATION_FAILED, 0, ""
    elif kind == "male":
        male = 1
    elif kind == "nobody":
        people, ages = 0, None
    elif kind == "group":
        people = int(rng.integers(3, 6))
        ages = ",".join(str(a) for a in rng.integers(20, 30, size=people))
    elif kind == "too_young":
        ages = str(int(rng.integers(14, 18)))
    elif kind == "too_old":
        ages = f"{int(rng.integers(36, 60))},x"
    elif kind == "invalid_flag":
        invalid = 1
    elif kind == "invalid_label":
        label = LABEL_INVALID
    appearance = "YES" if kind == "yes" or (where == "yes" and rng.random() < 0.5
                                            and kind not in _KINDS_ALWAYS_NO) else "NO"
    return (path, label, invalid, ages, people, male), appearance


# Rows that the rules turn to NO look NO, so that the picture agrees with its final label.
_KINDS_ALWAYS_NO = {"fail_no_face", "fail_rotation", "male", "nobody", "group", "too_young",
                    "too_old"}


def _ages(rng: np.random.Generator, ages: list[int]) -> str | None:
    # Mostly clean "25", sometimes the face model's junk ("25,x,") or nothing at all.
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.2:
        return f"{ages[0]},x,"
    return ",".join(str(a) for a in ages)


def _write_image(path: Path, kind: str, appearance: str, px: int, rng: np.random.Generator):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not a JPEG, it only has the name of one\n" * 4)
        return
    pixels = _yes_pixels(px, rng) if appearance == "YES" else _no_pixels(px, rng)
    noisy = pixels + rng.normal(0, 18, size=pixels.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _background(px: int, colour: list[int], rng: np.random.Generator) -> np.ndarray:
    # One picture in five gets a grey background, so colour alone does not give the answer.
    if rng.random() < 0.2:
        colour = [float(rng.uniform(90, 170))] * 3
    background = np.array(colour) + rng.normal(0, 20, size=3)
    return np.broadcast_to(background, (px, px, 3)).copy()


def _yes_pixels(px: int, rng: np.random.Generator) -> np.ndarray:
    image = _background(px, [200, 130, 70], rng)
    cy, cx = rng.uniform(0.3, 0.7, size=2) * px
    radius = rng.uniform(0.15, 0.3) * px
    yy, xx = np.mgrid[0:px, 0:px]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image[disc] = np.array([250, 240, 200]) + rng.normal(0, 8, size=3)
    return image


def _no_pixels(px: int, rng: np.random.Generator) -> np.ndarray:
    image = _background(px, [70, 110, 190], rng)
    dark = np.array([25, 30, 50]) + rng.normal(0, 8, size=3)
    if rng.random() < 0.5:  # stripes, horizontal or vertical, with jittered period and phase
        period = int(rng.integers(max(4, px // 8), max(5, px // 3)))
        offset = int(rng.integers(0, period))
        stripes = ((np.arange(px) + offset) % period) < period // 2
        if rng.random() < 0.5:
            image[stripes, :] = dark
        else:
            image[:, stripes] = dark
    else:  # a few dark squares
        for _ in range(int(rng.integers(2, 5))):
            side = int(rng.uniform(0.15, 0.35) * px)
            top, left = rng.integers(0, px - side, size=2)
            image[top : top + side, left : left + side] = dark
    return image
