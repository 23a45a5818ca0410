"""Writing and reading Pathfinder datasets (numpy/OpenCV only; no torch).

Two formats under ``OUT/curv_contour_length_N/`` (``N`` = contour length):

``png`` (the authors' layout)
    ``imgs/<batch>/sample_<i>.png`` (300x300 uint8) and the label at the same path under ``seg/``
    (0/255). Batches are numbered from 1 and hold ``batch_size`` samples (25,000 as for the
    C-RBP PF-9/14 data); global sample ``g`` is ``sample_<g % batch_size>`` of batch
    ``g // batch_size + 1``. The split lists ``OUT/train_images_N_SEG.txt`` and
    ``OUT/test_images_N_SEG.txt`` use the authors' "path label" format
    (``curv_contour_length_14/imgs/1/sample_11653.png 0``, paths relative to ``OUT``).
``npy`` (compact, for fast training)
    ``npy/shard_<k>.npy``: uint8 ``(n, 2, S, S)`` with ``[:, 0]`` the image and ``[:, 1]`` the
    label, memory-mappable; ``S`` = ``store_size`` (the canvas size, or e.g. 150 to store images
    already bicubic-resized by the training transform, labels as resized grey values so the
    threshold stays a training choice). ``npy/index.json`` lists the shards and the test indices.

Both formats share ``dataset.json`` (all parameters) and are written shard by shard. A shard is
finished when ``.shards/shard_<k>.done`` exists: written atomically after the shard's files, it
records the size and SHA-256 of each of them (an ``npy`` shard is also written to a temporary
name and renamed). A re-run verifies every finished shard against its record (``verify``:
"checksum" reads the files, "size" only stats them), rewrites a shard whose files are missing,
truncated or changed (one line on stderr naming the file), skips intact shards and redoes
interrupted ones. Pool workers die with the generating process (see
:mod:`crbp_d2.utils.procs`): a killed run leaves no process writing behind it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from crbp_d2.contours.generator import PathfinderParams, get_generator
from crbp_d2.utils.io import atomic_write, atomic_write_text
from crbp_d2.utils.procs import die_with_parent, pool_initargs

FORMATS: Tuple[str, ...] = ("png", "npy")
VERIFY_LEVELS: Tuple[str, ...] = ("checksum", "size")
MANIFEST = "dataset.json"
FORMAT_VERSION = 1
PNG_COMPRESSION = 3  # zlib level
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's tag and CRC: the last 8 bytes of a whole PNG
_BICUBIC = Image.Resampling.BICUBIC if hasattr(Image, "Resampling") else Image.BICUBIC

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------- layout
def dataset_dir(out_dir: PathLike, contour_length: int) -> Path:
    """``OUT/curv_contour_length_N``."""
    return Path(out_dir) / f"curv_contour_length_{int(contour_length)}"


def png_relpaths(index: int, contour_length: int, batch_size: int) -> Tuple[str, str]:
    """(image, label) paths of global sample ``index``, relative to ``OUT``."""
    batch, within = index // batch_size + 1, index % batch_size
    base = f"curv_contour_length_{int(contour_length)}"
    return (f"{base}/imgs/{batch}/sample_{within}.png", f"{base}/seg/{batch}/sample_{within}.png")


def shard_ranges(num: int, shard_size: int) -> List[Tuple[int, int]]:
    """[(start, stop)] of every shard of ``num`` samples."""
    return [(start, min(num, start + shard_size)) for start in range(0, num, shard_size)]


def split_test_indices(num: int, num_test: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of the test split: ``num_test`` of ``range(num)`` drawn at random
    (deterministic in ``seed``), spread over all batches as in the authors' lists."""
    if not 0 <= num_test <= num:
        raise ValueError(f"num_test must be in [0, num={num}], got {num_test}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(num), 0x5E1])))
    return np.sort(rng.choice(num, size=num_test, replace=False)).astype(np.int64)


def default_num_test(num: int) -> int:
    """10,000 of 200,000 as in C-RBP: 5 % of the samples, at most 10,000."""
    return min(10_000, num // 20)


# ---------------------------------------------------------------------------------------- encode
def encode_png(array: np.ndarray) -> bytes:
    """Deterministic 8-bit grey PNG bytes of a (H, W) uint8 array.

    A minimal encoder (no row filter, zlib level 3): three times faster than OpenCV's and
    smaller files on these sparse images; any PNG reader opens them."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"encode_png needs a (H, W) uint8 array, got {array.dtype}{array.shape}")
    height, width = array.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # filter byte 0 ("none") per row
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESSION)),
            _png_chunk(b"IEND", b""),
        )
    )


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def read_png(path: PathLike) -> np.ndarray:
    """A grey PNG as (H, W) uint8."""
    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return array


def resize_uint8(array: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic resize of a (H, W) uint8 array to (size, size) uint8 (the C-RBP loader's op)."""
    if array.shape == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), _BICUBIC))


# ---------------------------------------------------------------------------------------- shards
def write_png_sample(
    out_dir: PathLike,
    index: int,
    image: np.ndarray,
    label: np.ndarray,
    contour_length: int,
    batch_size: int = 25_000,
    made_dirs: Optional[set] = None,
) -> Dict[str, List]:
    """Write one sample's image and label PNGs in the authors' layout under ``out_dir``.
    Returns ``{path relative to out_dir: [size, sha256]}`` of the two files."""
    image_rel, label_rel = png_relpaths(index, contour_length, batch_size)
    records = {}
    for rel, array in ((image_rel, image), (label_rel, label)):
        path = Path(out_dir) / rel
        if made_dirs is None or path.parent not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            if made_dirs is not None:
                made_dirs.add(path.parent)
        data = encode_png(array)
        path.write_bytes(data)
        records[rel] = [len(data), hashlib.sha256(data).hexdigest()]
    return records


def _write_png_shard(task: dict) -> int:
    params = PathfinderParams(**task["params"])
    generator = get_generator(params)
    made_dirs: set = set()
    records: Dict[str, List] = {}
    for index in range(task["start"], task["stop"]):
        sample = generator.sample(task["seed"], index)
        records.update(
            write_png_sample(
                task["out_dir"],
                index,
                sample.image,
                sample.label,
                params.contour_length,
                task["batch_size"],
                made_dirs,
            )
        )
    _write_shard_record(task, records)
    return task["stop"] - task["start"]


def _write_npy_shard(task: dict) -> int:
    params = PathfinderParams(**task["params"])
    generator = get_generator(params)
    size = task["store_size"]
    count = task["stop"] - task["start"]
    block = np.empty((count, 2, size, size), dtype=np.uint8)
    for k, index in enumerate(range(task["start"], task["stop"])):
        sample = generator.sample(task["seed"], index)
        block[k, 0] = resize_uint8(sample.image, size)
        block[k, 1] = resize_uint8(sample.label, size)
    stream = io.BytesIO()
    np.save(stream, block)
    data = stream.getvalue()
    npy_path = Path(task["npy_path"])
    atomic_write(npy_path, lambda out: out.write(data))
    rel = npy_path.relative_to(task["out_dir"]).as_posix()
    _write_shard_record(task, {rel: [len(data), hashlib.sha256(data).hexdigest()]})
    return count


def _write_shard_record(task: dict, files: Dict[str, List]) -> None:
    record = {"start": task["start"], "stop": task["stop"], "files": files}
    atomic_write_text(Path(task["done_path"]), json.dumps(record))


def _shard_done_path(root: Path, shard: int) -> Path:
    return root / ".shards" / f"shard_{shard:06d}.done"


def _shard_npy_path(root: Path, shard: int) -> Path:
    return root / "npy" / f"shard_{shard:06d}.npy"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_files(task: dict, fmt: str, contour_length: int) -> List[str]:
    """Paths (relative to ``out_dir``) a finished shard consists of."""
    if fmt == "npy":
        return [Path(task["npy_path"]).relative_to(task["out_dir"]).as_posix()]
    return [
        rel
        for index in range(task["start"], task["stop"])
        for rel in png_relpaths(index, contour_length, task["batch_size"])
    ]


def _shard_problem(task: dict, fmt: str, contour_length: int, verify: str) -> Optional[str]:
    """Why a shard recorded as finished is not intact on disk (naming the file), or None.

    Shards recorded before the records held sizes and checksums are checked structurally (a
    PNG ends with its IEND chunk; an npy file holds the whole array its header announces) and
    given a record when intact."""
    out_dir = Path(task["out_dir"])
    done_path = Path(task["done_path"])
    try:
        record = json.loads(done_path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        return f"{done_path} is unreadable"
    expected = _expected_files(task, fmt, contour_length)
    files = record.get("files")
    if files is None:  # an older record without sizes and checksums
        adopted = {}
        for rel in expected:
            path = out_dir / rel
            if not path.is_file():
                return f"{path} is missing"
            if fmt == "png":
                with open(path, "rb") as stream:
                    head = stream.read(8)
                    stream.seek(max(0, path.stat().st_size - 8))
                    tail = stream.read(8)
                if head != _PNG_SIGNATURE or tail != _PNG_END:
                    return f"{path} is not a whole PNG file (truncated?)"
            else:
                rows = task["stop"] - task["start"]
                size = task["store_size"]
                problem = npy_problem(path, (rows, 2, size, size), np.uint8)
                if problem is not None:
                    return problem
            adopted[rel] = [path.stat().st_size, _sha256_file(path)]
        _write_shard_record(task, adopted)
        return None
    if sorted(files) != sorted(expected):
        return f"{done_path} lists other files than the shard's"
    for rel in expected:
        path = out_dir / rel
        size, digest = files[rel]
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            return f"{path} is missing"
        if actual != size:
            return f"{path} has {actual} bytes, {size} were written (truncated or changed)"
        if verify == "checksum" and _sha256_file(path) != digest:
            return f"{path} has changed since it was written (SHA-256 differs)"
    return None


def _manifest(
    params: PathfinderParams,
    num: int,
    seed: int,
    fmt: str,
    shard_size: int,
    batch_size: int,
    store_size: int,
    num_test: int,
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "num": int(num),
        "seed": int(seed),
        "shard_size": int(shard_size),
        "batch_size": int(batch_size),
        "store_size": int(store_size),
        "num_test": int(num_test),
        "params": dataclasses.asdict(params),
    }


def _check_manifest(path: Path, wanted: dict) -> None:
    existing = json.loads(path.read_text())
    differing = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
    if differing:
        details = ", ".join(
            f"{k}: {existing.get(k)!r} there vs {wanted.get(k)!r} now"
            for k in differing
            if k != "params"
        )
        if "params" in differing:
            old, new = existing.get("params", {}), wanted["params"]
            params_diff = [
                f"{k}={old.get(k)!r}->{new.get(k)!r}" for k in new if old.get(k) != new.get(k)
            ]
            details = ", ".join(filter(None, [details, "params " + ", ".join(params_diff)]))
        raise ValueError(
            f"{path.parent} already holds a dataset made with other settings ({details}); "
            f"use another output directory (nothing was changed)"
        )


def generate_dataset(
    out_dir: PathLike,
    params: PathfinderParams,
    num: int,
    seed: int = 0,
    fmt: str = "png",
    workers: Optional[int] = None,
    shard_size: int = 1000,
    batch_size: int = 25_000,
    store_size: Optional[int] = None,
    num_test: Optional[int] = None,
    progress: bool = True,
    on_shard_done: Optional[Callable[[int], None]] = None,
    verify: str = "checksum",
) -> Path:
    """Write ``num`` samples of ``seed`` to ``out_dir/curv_contour_length_N`` (resumable).

    ``fmt``: "png" (authors' layout + split lists) or "npy" (uint8 shards + index).
    ``workers``: processes (default: all cores). ``store_size`` (npy only): side of the stored
    arrays (default: the canvas size). ``verify``: how shards finished by an earlier run are
    checked before being kept ("checksum": size and SHA-256 of every file; "size": sizes only);
    a shard that fails is rewritten, with one line on stderr naming the file. Returns the
    dataset directory. Raises ``ValueError`` for bad arguments before anything is written, and
    ``GenerationError`` when a sample is impossible.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    if not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if store_size is None:
        store_size = params.canvas_size
    if fmt == "png" and store_size != params.canvas_size:
        raise ValueError(
            f"store_size applies to the npy format only (png keeps {params.canvas_size} px)"
        )
    if not 1 <= store_size <= params.canvas_size:
        raise ValueError(f"store_size must be in [1, {params.canvas_size}], got {store_size}")
    if num_test is None:
        num_test = default_num_test(num)
    if not 0 <= num_test <= num:
        raise ValueError(f"num_test must be in [0, num={num}], got {num_test}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    root = dataset_dir(out_dir, params.contour_length)
    wanted = _manifest(params, num, seed, fmt, shard_size, batch_size, store_size, num_test)
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        _check_manifest(manifest_path, wanted)
    else:
        # Fail fast (one sample, bounded restarts) before creating anything.
        get_generator(params).sample(seed, 0)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(manifest_path, json.dumps(wanted, indent=1))
    _remove_stale_temporaries(root)

    ranges = shard_ranges(num, shard_size)
    todo = []
    for shard, (start, stop) in enumerate(ranges):
        done_path = _shard_done_path(root, shard)
        task = {
            "params": dataclasses.asdict(params),
            "seed": int(seed),
            "start": start,
            "stop": stop,
            "out_dir": str(Path(out_dir)),
            "batch_size": int(batch_size),
            "store_size": int(store_size),
            "done_path": str(done_path),
            "npy_path": str(_shard_npy_path(root, shard)),
        }
        if fmt == "npy" and not done_path.exists() and _shard_npy_path(root, shard).exists():
            # Written by a version that kept no record: adopted below when intact.
            atomic_write_text(done_path, json.dumps({"start": start, "stop": stop}))
        if done_path.exists():
            problem = _shard_problem(task, fmt, params.contour_length, verify)
            if problem is None:
                continue
            print(f"shard {shard}: {problem}; rewriting it", file=sys.stderr)
            done_path.unlink()
        todo.append(task)
    writer = _write_png_shard if fmt == "png" else _write_npy_shard
    done_before = num - sum(t["stop"] - t["start"] for t in todo)
    bar = _progress_bar(num, done_before, f"PF{params.contour_length} {fmt}", progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                bar.update(writer(task))
                if on_shard_done is not None:
                    on_shard_done(task["stop"])
        else:
            with ProcessPoolExecutor(
                max_workers=min(workers, len(todo)),
                initializer=die_with_parent,
                initargs=pool_initargs(),
            ) as pool:
                for count in _as_completed(pool, writer, todo):
                    bar.update(count)
                    if on_shard_done is not None:
                        on_shard_done(count)
    finally:
        bar.close()

    test = split_test_indices(num, num_test, seed)
    if fmt == "png":
        _write_lists(Path(out_dir), params.contour_length, num, batch_size, test)
    else:
        index = {
            "num": int(num),
            "store_size": int(store_size),
            "shards": [
                {"file": _shard_npy_path(root, k).name, "start": a, "stop": b}
                for k, (a, b) in enumerate(ranges)
            ],
            "test_indices": test.tolist(),
        }
        atomic_write_text(root / "npy" / "index.json", json.dumps(index))
    return root


def _as_completed(
    pool: ProcessPoolExecutor, writer: Callable[[dict], int], tasks: Sequence[dict]
) -> Iterable[int]:
    from concurrent.futures import as_completed

    futures = [pool.submit(writer, task) for task in tasks]
    try:
        for future in as_completed(futures):
            yield future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _progress_bar(total: int, initial: int, description: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        enabled = False
    if not enabled:

        class _Silent:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Silent()
    return tqdm(total=total, initial=initial, desc=description, unit="img", smoothing=0.05)


def _remove_stale_temporaries(root: Path) -> None:
    for folder in (root / "npy", root / ".shards", root):
        if folder.is_dir():
            for path in folder.glob("*.tmp"):
                try:
                    path.unlink()
                except OSError:
                    pass


def _write_lists(
    out_dir: Path, contour_length: int, num: int, batch_size: int, test: np.ndarray
) -> Tuple[Path, Path]:
    is_test = np.zeros(num, dtype=bool)
    is_test[test] = True
    lines = {True: [], False: []}
    for index in range(num):
        lines[bool(is_test[index])].append(
            f"{png_relpaths(index, contour_length, batch_size)[0]} 0\n"
        )
    train_path = out_dir / f"train_images_{contour_length}_SEG.txt"
    test_path = out_dir / f"test_images_{contour_length}_SEG.txt"
    atomic_write_text(train_path, "".join(lines[False]))
    atomic_write_text(test_path, "".join(lines[True]))
    return train_path, test_path


# ---------------------------------------------------------------------------------------- read
def npy_problem(
    path: PathLike, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[type] = None
) -> Optional[str]:
    """Why ``path`` is not a whole ``.npy`` array file (of ``shape`` / ``dtype`` when given), in
    words naming the file; None when it is. Reads the header only."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path} is missing"
    if size == 0:
        return f"{path} is empty (0 bytes)"
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(stream)
            else:  # 2.0 and 3.0 share the header layout (3.0 only allows UTF-8 field names)
                header = np.lib.format.read_array_header_2_0(stream)
            offset = stream.tell()
    except Exception as error:  # numpy raises ValueError, EOFError, SyntaxError, ...
        if isinstance(error, SyntaxError) or not str(error):
            reason = f"garbled header ({type(error).__name__})"
        else:
            reason = str(error).splitlines()[0][:200]
        return f"{path} is not a readable npy file ({size} bytes; {reason})"
    found_shape, _, found_dtype = header
    if found_dtype.hasobject:
        return f"{path} holds Python objects, not an array of numbers"
    expected = offset + int(np.prod(found_shape, dtype=np.int64)) * found_dtype.itemsize
    if size < expected:
        return f"{path} is truncated: {size} bytes, its header announces {expected}"
    if size > expected:
        return f"{path} has {size - expected} bytes after its array (corrupt)"
    if shape is not None and tuple(found_shape) != tuple(shape):
        return f"{path} holds an array of shape {tuple(found_shape)}, expected {tuple(shape)}"
    if dtype is not None and found_dtype != np.dtype(dtype):
        return f"{path} holds {found_dtype} values, expected {np.dtype(dtype)}"
    return None


def load_npy_shard(
    path: PathLike, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[type] = None
) -> np.ndarray:
    """Memory-map an npy shard, or raise one ``ValueError`` naming the file when it is empty,
    truncated, corrupt or of another shape / dtype."""
    problem = npy_problem(path, shape, dtype)
    if problem is not None:
        raise ValueError(
            f"bad Pathfinder shard: {problem}; re-run tools/generate_pathfinder.py with the same "
            f"arguments to rewrite it"
        )
    return np.load(path, mmap_mode="r")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a JSON file ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


def label_path_for(image_path: str) -> str:
    """The authors' label path: ``.../imgs/...`` -> ``.../seg/...``."""
    marker = "/imgs/"
    if marker not in image_path:
        raise ValueError(f"image path {image_path!r} is not in an 'imgs' folder")
    return image_path.replace(marker, "/seg/", 1)


def read_list(list_file: PathLike) -> List[str]:
    """Image paths of a "path label" list file (the label column is ignored)."""
    paths = []
    for number, line in enumerate(Path(list_file).read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (1, 2):
            raise ValueError(f"{list_file}:{number}: expected 'path label', got {line!r}")
        paths.append(parts[0])
    return paths


class StoredPathfinder:
    """Random access to a written dataset: ``get(i) -> (image, label)`` uint8 (S, S).

    ``path``: the ``--out`` directory (with ``contour_length``) or ``curv_contour_length_N``
    itself. ``split``: "train", "test" or "all". ``list_file`` reads the authors' PNG data from a
    "path label" list instead (paths relative to ``path``).
    """

    def __init__(
        self,
        path: PathLike,
        split: str = "train",
        contour_length: Optional[int] = None,
        list_file: Optional[PathLike] = None,
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        path = Path(path)
        self._shards: List[Tuple[int, int, Path]] = []
        self._arrays: Dict[int, np.ndarray] = {}
        if list_file is not None:
            self.format = "png"
            self.out_dir = path
            self.image_paths = read_list(list_file)
            self.indices = np.arange(len(self.image_paths))
            self.manifest: dict = {}
            return
        root = self._locate(path, contour_length)
        self.root = root
        self.manifest = _read_json(root / MANIFEST)
        self.format = self.manifest["format"]
        num = self.manifest["num"]
        self.out_dir = root.parent
        if self.format == "png":
            cl, bs = self.manifest["params"]["contour_length"], self.manifest["batch_size"]
            lists = {s: self.out_dir / f"{s}_images_{cl}_SEG.txt" for s in ("train", "test")}
            for name, list_path in lists.items():
                if not list_path.exists():
                    raise FileNotFoundError(
                        f"{list_path} is missing: is the dataset complete? "
                        f"(re-run the generator to finish it)"
                    )
            self.image_paths = [png_relpaths(i, cl, bs)[0] for i in range(num)]
            test = split_test_indices(num, self.manifest["num_test"], self.manifest["seed"])
        else:
            index_path = root / "npy" / "index.json"
            if not index_path.exists():
                raise FileNotFoundError(
                    f"{index_path} is missing: is the dataset complete? "
                    f"(re-run the generator to finish it)"
                )
            index = _read_json(index_path)
            self._shards = [
                (s["start"], s["stop"], root / "npy" / s["file"]) for s in index["shards"]
            ]
            self._store_size = int(index["store_size"])
            # Check every shard now (headers and sizes only), so that a bad file stops a run
            # before training with one line naming it, not in a DataLoader worker later.
            for start, stop, file in self._shards:
                problem = npy_problem(file, self._shard_shape(start, stop), np.uint8)
                if problem is not None:
                    raise ValueError(
                        f"bad Pathfinder shard: {problem}; re-run "
                        f"tools/generate_pathfinder.py with the same arguments to rewrite it"
                    )
            test = np.array(index["test_indices"], dtype=np.int64)
        if split == "all":
            self.indices = np.arange(num)
        elif split == "test":
            self.indices = np.sort(test)
        else:
            keep = np.ones(num, dtype=bool)
            keep[test] = False
            self.indices = np.flatnonzero(keep)

    @staticmethod
    def _locate(path: Path, contour_length: Optional[int]) -> Path:
        if (path / MANIFEST).exists():
            return path
        if contour_length is not None and (dataset_dir(path, contour_length) / MANIFEST).exists():
            return dataset_dir(path, contour_length)
        found = sorted(path.glob(f"curv_contour_length_*/{MANIFEST}"))
        if len(found) == 1 and contour_length is None:
            return found[0].parent
        if not found:
            raise FileNotFoundError(f"no Pathfinder dataset ({MANIFEST}) under {path}")
        raise ValueError(f"{path} holds several contour lengths; pass contour_length")

    def _shard_shape(self, start: int, stop: int) -> Tuple[int, int, int, int]:
        return (stop - start, 2, self._store_size, self._store_size)

    def __len__(self) -> int:
        return int(len(self.indices))

    def sample_index(self, position: int) -> int:
        """Global sample index of item ``position`` of this split."""
        return int(self.indices[position])

    def get(self, position: int) -> Tuple[np.ndarray, np.ndarray]:
        """(image, label) uint8 arrays of item ``position`` of this split."""
        if not -len(self) <= position < len(self):
            raise IndexError(f"index {position} out of range for {len(self)} samples")
        index = int(self.indices[position])
        if self.format == "png":
            image_rel = self.image_paths[index]
            image = read_png(self.out_dir / image_rel)
            label = read_png(self.out_dir / label_path_for(image_rel))
            return image, label
        for shard, (start, stop, file) in enumerate(self._shards):
            if start <= index < stop:
                array = self._arrays.get(shard)
                if array is None:
                    array = load_npy_shard(file, self._shard_shape(start, stop), np.uint8)
                    self._arrays[shard] = array
                item = np.asarray(array[index - start])
                return item[0], item[1]
        raise IndexError(f"sample {index} is in no shard")

    def __getstate__(self) -> dict:  # memory maps are reopened in each DataLoader worker
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


# ---------------------------------------------------------------------------------------- preview
def contact_sheet(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], columns: int = 4, gap: int = 4
) -> np.ndarray:
    """RGB (H, W, 3) uint8 grid: the ink in grey, the label overlaid in red."""
    if len(images) != len(labels) or not images:
        raise ValueError("contact_sheet needs the same, non-zero number of images and labels")
    h, w = images[0].shape
    rows = math.ceil(len(images) / columns)
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 64, dtype=np.uint8)
    for k, (image, label) in enumerate(zip(images, labels)):
        tile = np.repeat(image[:, :, None], 3, axis=2)
        on = label > 127
        tile[on] = (
            np.array([255, 40, 40]) * (image[on, None] / 255.0) * 0.5
            + np.array([255, 40, 40]) * 0.5
        ).astype(np.uint8)
        r, c = divmod(k, columns)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        sheet[top : top + h, left : left + w] = tile
    return sheet


def write_preview(
    path: PathLike, params: PathfinderParams, seed: int = 0, count: int = 16, columns: int = 4
) -> Path:
    """A PNG contact sheet of samples ``0..count-1`` of ``seed`` with labels overlaid."""
    generator = get_generator(params)
    samples = [generator.sample(seed, i) for i in range(count)]
    sheet = contact_sheet([s.image for s in samples], [s.label for s in samples], columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
