"""The decode-once image cache: built once, reused, rebuilt on change, shared as a memmap."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from swipr_core.data import cache as cache_module
from swipr_core.data.cache import build_cache
from swipr_core.data.images import load_square
from swipr_core.errors import SwiprError
from tests.prockit import children_of, is_alive
from tests.studykit import ROOT


def write_images(folder, n, size=(48, 36), seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rel = f"p{i // 50}/img{i}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / rel, quality=90)
        paths.append(rel)
    return paths


def test_builds_once_and_reuses(tmp_path):
    paths = write_images(tmp_path, 7)
    cache = build_cache(tmp_path, paths, tmp_path / "cache", px=32, workers=1)
    array = cache.open()
    assert array.shape == (7, 32, 32, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[3], load_square(tmp_path / paths[3], 32))
    # The index beside it lists the paths in row order.
    index = json.loads(cache.file.with_suffix(".json").read_text())
    assert index["paths"] == paths
    built_at = cache.file.stat().st_mtime_ns
    again = build_cache(tmp_path, paths, tmp_path / "cache", px=32, workers=1)
    assert again.file == cache.file and again.file.stat().st_mtime_ns == built_at
    # No temp files are left behind (the empty lock file stays, for the next builder).
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


def test_a_changed_image_or_size_gets_a_new_cache(tmp_path):
    paths = write_images(tmp_path, 3)
    first = build_cache(tmp_path, paths, tmp_path / "cache", px=32, workers=1)
    assert build_cache(tmp_path, paths, tmp_path / "cache", px=24, workers=1).file != first.file
    os.utime(tmp_path / paths[0], ns=(1, 1))
    assert build_cache(tmp_path, paths, tmp_path / "cache", px=32, workers=1).file != first.file


def test_parallel_chunks_fill_the_same_rows_as_one_worker(tmp_path, monkeypatch):
    paths = write_images(tmp_path, 11)
    monkeypatch.setattr(cache_module, "CHUNK", 3)   # 4 chunks, the last one short
    serial = build_cache(tmp_path, paths, tmp_path / "a", px=20, workers=1).open()
    parallel = build_cache(tmp_path, paths, tmp_path / "b", px=20, workers=2).open()
    np.testing.assert_array_equal(serial, parallel)
    assert len({serial[i].tobytes() for i in range(11)}) == 11   # every row is its own image


def test_a_broken_image_names_the_file_and_leaves_no_cache(tmp_path):
    paths = write_images(tmp_path, 3)
    (tmp_path / paths[1]).write_bytes(b"not a jpeg")
    with pytest.raises(SwiprError, match="img1.jpg: can't decode"):
        build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_open_is_a_read_only_memmap_not_a_copy(tmp_path):
    paths = write_images(tmp_path, 4)
    array = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1).open()
    assert isinstance(array, np.memmap)
    with pytest.raises(ValueError):
        array[0, 0, 0, 0] = 1


def test_open_refuses_a_cache_that_does_not_match_its_paths(tmp_path):
    # Without the images to rebuild from, a wrong-shaped cache is refused, never trained on.
    paths = write_images(tmp_path, 4)
    cache = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1)
    np.save(cache.file, np.zeros((3, 16, 16, 3), np.uint8))
    with pytest.raises(SwiprError, match="damaged image cache .*delete it to rebuild"):
        cache_module.ImageCache(cache.file, cache.paths, cache.px).open()


def truncate(file, keep_bytes):
    with open(file, "r+b") as handle:
        handle.truncate(keep_bytes)


@pytest.mark.parametrize("keep", [0, 50, 128 + 16 * 16 * 3 * 2])   # empty, half a header, half the rows
def test_a_truncated_cache_is_rebuilt_by_the_next_build(tmp_path, capsys, keep):
    paths = write_images(tmp_path, 4)
    good = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1).open().copy()
    cache = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1)
    truncate(cache.file, keep)
    capsys.readouterr()
    again = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and "rebuilding" in err[0], err
    np.testing.assert_array_equal(again.open(), good)


def test_a_cache_damaged_after_the_build_is_rebuilt_on_open(tmp_path, capsys):
    # The trial's open() finds the damage (which would fail every later trial with "mmap
    # length is greater than file size") and rebuilds before mapping.
    paths = write_images(tmp_path, 4)
    cache = build_cache(tmp_path, paths, tmp_path / "cache", px=16, workers=1)
    good = cache.open().copy()
    truncate(cache.file, cache.file.stat().st_size - 1)
    np.testing.assert_array_equal(cache.open(), good)
    assert "rebuilding" in capsys.readouterr().err
    assert cache_module.cache_problem(cache.file, 4, 16) is None


def test_a_cache_with_a_foreign_header_is_rebuilt(tmp_path):
    paths = write_images(tmp_path, 3)
    cache = build_cache(tmp_path, paths, tmp_path / "cache", px=8, workers=1)
    np.save(cache.file, np.zeros((3, 8, 8, 3), np.float32))   # same shape, wrong dtype
    assert "float32" in cache_module.cache_problem(cache.file, 3, 8)
    assert build_cache(tmp_path, paths, tmp_path / "cache", px=8, workers=1).open().dtype == np.uint8


# Run in fresh processes: RssAnon is memory private to a process (a copy), RssFile is
# pages mapped from files, which the OS page cache holds once for every process.
_MEMORY = """
import sys, numpy as np
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}
"""


# glibc keeps freed large blocks for reuse (its mmap threshold grows), which would show as
# anonymous memory; a fixed threshold hands them straight back, so RssAnon is what is live.
_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def _run(script: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_MEMORY) + textwrap.dedent(script), *map(str, args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=_ENV)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory):
    """~38 MB of decoded images: large next to what the processes below may copy."""
    folder = tmp_path_factory.mktemp("big")
    paths = write_images(folder, 200, size=(40, 30))
    return build_cache(folder, paths, folder / "cache", px=252, workers=2)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc memory counters")
def test_processes_share_the_cache_pages_instead_of_copying(big_cache):
    script = """
    import json
    from pathlib import Path
    from swipr_core.data.cache import ImageCache
    cache = ImageCache(Path(sys.argv[1]), tuple(f"x{i}" for i in range(int(sys.argv[2]))), int(sys.argv[3]))
    before = rss()
    array = cache.open()
    total = sum(int(array[i].sum(dtype=np.int64)) for i in range(len(array)))   # read every page
    after = rss()
    print(json.dumps({"memmap": isinstance(array, np.memmap), "anon": after["RssAnon"] - before["RssAnon"],
                      "file": after["RssFile"] - before["RssFile"], "total": total}))
    """
    size = big_cache.file.stat().st_size
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_MEMORY) + textwrap.dedent(script),
                              str(big_cache.file), str(len(big_cache.paths)), str(big_cache.px)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result["memmap"]
        # Pages read through the shared file mapping (the OS may already have dropped some
        # under memory pressure), and none of them copied into the process.
        assert result["file"] > 0.5 * size, (result, size)
        assert result["anon"] < 0.1 * size, (result, size)
    assert results[0]["total"] == results[1]["total"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc memory counters")
def test_a_full_epoch_of_batches_copies_no_more_than_a_few_batches(big_cache):
    script = """
    import json
    from pathlib import Path
    from swipr_core.data.cache import ImageCache
    from swipr_core.data.loaders import Augment, CachedBatches
    cache = ImageCache(Path(sys.argv[1]), tuple(f"x{i}" for i in range(int(sys.argv[2]))), int(sys.argv[3]))
    array = cache.open()
    aug = Augment(32, (0.5,) * 3, (0.5,) * 3)
    for _ in CachedBatches(array, range(16), [0] * 16, 8, aug, train=True):   # warm up threads and allocators
        pass
    before = rss()
    loader = CachedBatches(array, range(len(array)), [0] * len(array), 8, aug, train=True)
    n = sum(len(images) for _ in range(2) for images, _ in loader)
    after = rss()
    print(json.dumps({"n": n, "anon": after["RssAnon"] - before["RssAnon"]}))
    """
    result = _run(script, big_cache.file, len(big_cache.paths), big_cache.px)
    assert result["n"] == 2 * len(big_cache.paths)
    # A copy of the cache would be all of it.
    assert result["anon"] < 0.5 * big_cache.file.stat().st_size, (result, big_cache.file.stat().st_size)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc memory counters")
def test_building_holds_one_chunk_not_the_whole_array(tmp_path):
    paths = write_images(tmp_path, 120, size=(40, 30))
    script = """
    import json
    from pathlib import Path
    from swipr_core.data import cache as cache_module
    cache_module.CHUNK = 10
    peak = []
    base = rss()["RssAnon"]
    built = cache_module.build_cache(Path(sys.argv[1]), [l for l in sys.argv[2].split(",")], Path(sys.argv[1]) / "c",
                                     px=252, workers=1, progress=lambda n: peak.append(rss()["RssAnon"] - base))
    print(json.dumps({"peak": max(peak), "size": built.file.stat().st_size}))
    """
    result = _run(script, tmp_path, ",".join(paths))
    assert result["size"] > 20_000_000
    assert result["peak"] < 0.25 * result["size"], result


def test_workers_starting_together_build_the_cache_once(tmp_path):
    paths = write_images(tmp_path, 6)
    script = """
    import json, time
    from pathlib import Path
    from swipr_core.data import cache as cache_module
    real = cache_module.load_square
    def slow(file, px):
        time.sleep(0.1)   # long enough that both processes ask before either finishes
        return real(file, px)
    cache_module.load_square = slow
    decoded = []
    built = cache_module.build_cache(Path(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[1]) / "c", px=16,
                                     workers=1, progress=decoded.append)
    print(json.dumps({"decoded": sum(decoded), "file": str(built.file)}))
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_MEMORY) + textwrap.dedent(script),
                               str(tmp_path), ",".join(paths)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["decoded"] for r in results) == [0, 6]   # one decoded everything, the other reused it
    assert results[0]["file"] == results[1]["file"]


_SLOW_BUILD = """
import sys, time
from pathlib import Path
from swipr_core.data import cache as cache_module
real = cache_module.load_square
def slow(file, px):
    time.sleep(0.05)   # slow enough to be stopped mid-build; forked workers inherit it
    return real(file, px)
cache_module.load_square = slow
cache_module.CHUNK = 4
root = Path(sys.argv[1])
cache_module.build_cache(root, sys.argv[2].split(","), root / "c", px=16, workers=2,
                         progress=lambda n: print("chunk", flush=True))
print("done", flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_build_stopped_by_a_signal_leaves_no_child_lock_or_temp_file(tmp_path, sig):
    # Stopped mid-build, the builder's decoding children die with it, its temp file is gone
    # (SIGTERM) or removed by the next build (SIGKILL), and the next build doesn't hang.
    paths = write_images(tmp_path, 80, size=(20, 16))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path), ",".join(paths)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "chunk"   # the pool is decoding
    children = children_of(proc.pid)
    assert children, "the build should run in child processes"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert "done" not in out and proc.returncode != 0
    deadline = time.monotonic() + 10
    while any(is_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_alive(pid) for pid in children), "a decoding child outlived its parent"
    temps = [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
    # SIGTERM: removed on the way out. SIGKILL: nothing runs, so the next build removes it.
    assert len(temps) == (0 if sig == signal.SIGTERM else 1), temps
    built = build_cache(tmp_path, paths, tmp_path / "c", px=16, workers=1)   # would hang on a held lock
    assert built.open().shape == (80, 16, 16, 3)
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")] == []
