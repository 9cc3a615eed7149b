"""A small Swipr-shaped dataset to try the whole pipeline without the real photos.

Shaped like the real problem, so that hyperparameters matter: after the study's label rules
about 81% of the rows are NO and 19% YES; LABEL_NOISE of the pictures show the other class
(the real labels come from a pre-filter and one person's taste); and the classes differ
subtly: a YES picture holds a faint warm blob, buried in a background of any colour with a
gradient and random shapes that say nothing. The metadata exercises every label rule and
every exclusion reason. LOOKS_FILE records what each picture shows, so tests can measure
the noise.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
from PIL import Image

from swipr_core.data.dataset import MAX_SEED
from swipr_core.data.labels import LabelRules
from swipr_core.errors import SwiprError

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
DEFAULT_IMAGES = 600  # `swipr demo-data`'s default too
MIN_IMAGES = 40  # below this not every rule and exclusion reason gets a row
MARKER = ".swipr-demo-data"  # lets a second run overwrite a demo dataset, and nothing else
LOOKS_FILE = "looks.csv"  # path,looks: the class each picture shows (labels may disagree)
LABEL_NOISE = 0.04  # share of pictures that show the other class than their row's kind
CUE_ALPHA = 0.85  # how strongly the YES blob shows through (1: opaque); lower is harder
NOISE_SD = 12  # pixel noise over every picture

# kind -> (rows per 100, where it lives); every kind gets at least one row. 16.5 YES of the
# 86 rows per 100 that the rules keep: 19% YES, as in the real data.
_KINDS = {
    "yes": (16.5, "yes"), "no": (54.5, "no"),
    "fail_no_face": (2, "yes"), "fail_rotation": (2, "yes"), "male": (3, "yes"),
    "nobody": (2, "yes"), "group": (3, "yes"), "too_young": (2, "yes"), "too_old": (2, "yes"),
    "outside": (4, "outside"), "invalid_flag": (3, "any"), "invalid_label": (3, "any"),
    "missing": (2, "any"), "truncated": (1, "any"), "garbage": (1, "any"),
}


def write_demo_data(out_dir: Path, n_images: int = DEFAULT_IMAGES, image_px: int = 64, seed: int = 0) -> Path:
    """Write `out_dir/pics.db` and its images; return the database path (images under out_dir)."""
    out_dir = Path(out_dir)
    if not isinstance(n_images, int) or n_images < MIN_IMAGES:
        raise SwiprError(f"demo data: n_images (--images) must be at least {MIN_IMAGES}, "
                         f"but got {n_images!r}")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SwiprError(f"demo data: seed (--seed) must be between 0 and {MAX_SEED}, but got {seed!r}")
    if not isinstance(image_px, int) or not 16 <= image_px <= 1024:
        raise SwiprError(f"demo data: image_px must be between 16 and 1024, but got {image_px!r}")
    _prepare_dir(out_dir)
    rng = np.random.default_rng(seed)
    rows, looks = [], []
    kinds = _kind_list(n_images, rng)
    for index, kind in enumerate(kinds):
        row, appearance = _metadata(kind, index, rng)
        if rng.random() < LABEL_NOISE:
            appearance = "NO" if appearance == "YES" else "YES"
        rows.append(row)
        looks.append(f"{row[0]},{appearance}\n")
        if kind != "missing":
            _write_image(out_dir / row[0], kind, appearance, image_px, rng)
    rows += _table_mistakes(rows[kinds.index("yes")])
    (out_dir / LOOKS_FILE).write_text("path,looks\n" + "".join(looks))
    return write_pics_table(out_dir / "pics.db", rows)


def write_pics_table(database: Path, rows: list[tuple]) -> Path:
    """`database` holding one table, pics, of `rows` (path, label, invalid, ages, num_people,
    male_present), in place of any file there: written beside it, then renamed, so a reader
    never sees half a database."""
    partial = database.with_name(database.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as connection:
        connection.execute("CREATE TABLE pics (path TEXT, label INTEGER, invalid INTEGER, "
                           "ages TEXT, num_people INTEGER, male_present INTEGER)")
        connection.executemany("INSERT INTO pics VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.close()
    os.replace(partial, database)
    return database


def row_count(database: Path) -> int:
    """The rows `database`'s pics table holds: the pictures' rows and the table's mistakes."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        count = connection.execute("SELECT count(*) FROM pics").fetchone()[0]
    connection.close()
    return int(count)


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
    pixels = _scene(px, rng)
    if appearance == "YES":
        _add_cue(pixels, rng)
    noisy = pixels + rng.normal(0, NOISE_SD, size=pixels.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _ellipse(px: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A mask of one randomly placed, sized and stretched ellipse."""
    cy, cx = rng.uniform(0.15, 0.85, size=2) * px
    ry, rx = rng.uniform(low, high, size=2) * px
    yy, xx = np.mgrid[0:px, 0:px]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _scene(px: int, rng: np.random.Generator) -> np.ndarray:
    """A background that says nothing about the label: any colour, a gradient, random shapes."""
    yy, xx = np.mgrid[0:px, 0:px] / px
    base = rng.uniform(30, 225, size=3)
    slope = rng.normal(0, 40, size=(2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    for _ in range(int(rng.integers(2, 6))):
        colour = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            image[_ellipse(px, rng, 0.08, 0.3)] = colour
        else:
            top, left = rng.integers(0, px - 2, size=2)
            height, width = rng.integers(2, max(3, px // 2), size=2)
            image[top : top + height, left : left + width] = colour
    return image


def _add_cue(image: np.ndarray, rng: np.random.Generator) -> None:
    """What makes a YES: a faint warm blob, blended in at CUE_ALPHA over whatever lies there."""
    blob = _ellipse(image.shape[0], rng, 0.12, 0.25)
    warm = np.array([230, 170, 130]) + rng.normal(0, 10, size=3)
    image[blob] = (1 - CUE_ALPHA) * image[blob] + CUE_ALPHA * warm


# Public for bench/make_pretrained.py, which pretrains on the same scenes with another task
# (a blob's colour, never the warm YES cue).
scene = _scene
ellipse = _ellipse
