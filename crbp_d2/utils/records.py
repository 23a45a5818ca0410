"""Checks that every result the README shows comes from a record, with its provenance.

- a README block ``<!-- results:NAME -->`` holds ``docs/results/NAME.md`` (the README is up to
  date), and ``NAME.json`` (the records) exists beside it;
- for the results whose table code renders from the records (:data:`RENDERERS`), ``NAME.md`` is
  what that code renders from ``NAME.json`` now (no hand edit, no stale table);
- every record of a block's JSON carries the provenance fields
  (:data:`crbp_d2.utils.machine.PROVENANCE_FIELDS`: device, torch, threads, git commit, shared
  machine), at its top level, in its ``machine`` dict or in a ``provenance`` dict (records
  measured before these fields existed carry them there, backfilled by
  :func:`backfill_provenance`: ``git_commit`` is then the commit that added the file (the code
  that wrote it was at or before it) and a field that was not recorded when it was measured is
  ``null``, with a ``note`` saying so);
- no record holds an absolute path;
- every number of the README outside the blocks that :data:`TRACKED` names is the one its
  record gives.

``python tools/update_readme.py --check`` and ``tests/test_readme_records.py`` run
:func:`check_results`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .io import PathLike, atomic_write_json
from .machine import PROVENANCE_FIELDS
from .report import _BLOCK, update_readme_blocks

# NAME -> "module:function" rendering NAME.md's text from the records of NAME.json
RENDERERS: Dict[str, str] = {
    "memory_cpu": "crbp_d2.benchmarks.memory:records_markdown",
    "memory_cuda": "crbp_d2.benchmarks.memory:records_markdown",
    "methods_cpu": "crbp_d2.benchmarks.methods:methods_markdown",
    "demo": "crbp_d2.cli.demo_summary:demo_markdown",
    "rfpn_cuda": "crbp_d2.rfpn.experiments.cuda_check:rfpn_cuda_markdown",
    "pathfinder_cuda": "crbp_d2.pathfinder.experiments.cuda_check:pathfinder_cuda_markdown",
    "generator_benchmark": "crbp_d2.pathfinder.experiments.generator_speed:benchmark_markdown",
}


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}"


def _memory_cuda_peaks(records: List[dict]) -> str:
    rows = sorted((r for r in records if r["method"] == "bptt"), key=lambda r: r["steps"])
    return ", ".join(_gib(r["peak_bytes"]) for r in rows)


def _memory_cuda_crbp_peak(records: List[dict]) -> str:
    return _gib(max(r["peak_bytes"] for r in records if r["method"] == "crbp"))


def _rfpn_cuda_step_peaks(records: List[dict], method: str) -> List[float]:
    rows = [r for r in records[0]["memory"] if r["method"] == method and "error" not in r]
    return [r["step_bytes"] / 2**20 for r in sorted(rows, key=lambda r: r["steps"])]


# Numbers of the README outside the blocks, each with the record it comes from:
# (what it is, regex with one group matching the number(s) in README.md, JSON name, function of
# the records giving the text the group must hold)
TRACKED: List[Tuple[str, str, str, Callable[[Any], str]]] = [
    (
        "H200 hGRU core: BPTT peaks at 6, 20, 80 steps (GiB)",
        r"BPTT's peak grows with the steps \(([\d., ]+) GiB at 6, 20, 80 steps\)",
        "memory_cuda",
        _memory_cuda_peaks,
    ),
    (
        "H200 hGRU core: C-RBP peak (GiB)",
        r"while C-RBP's stays at ([\d.]+) GiB",
        "memory_cuda",
        _memory_cuda_crbp_peak,
    ),
    (
        "H200 R-FPN: BPTT step peaks at N = 5, 10, 20 (MiB)",
        r"grows under BPTT \(([\d, ]+) MiB at N = 5, 10, 20\)",
        "rfpn_cuda",
        lambda records: ", ".join(f"{v:,.0f}" for v in _rfpn_cuda_step_peaks(records, "bptt")),
    ),
    (
        "H200 R-FPN: C-RBP step peaks, lowest to highest (MiB)",
        r"while C-RBP's stays level\s+\(([\d.]+ to [\d.]+) MiB\)",
        "rfpn_cuda",
        lambda records: "{:.1f} to {:.1f}".format(
            min(_rfpn_cuda_step_peaks(records, "crbp")), max(_rfpn_cuda_step_peaks(records, "crbp"))
        ),
    ),
    (
        "quick recipe on the H200: PQ things (hand-kept log)",
        r"H200 \(torch [^)]*\) \| [^|]* \| [^|]* \| [\d.]+ \| ([\d.]+) \|",
        "rfpn_quick_cuda",
        lambda records: f"{records[0]['results']['panoptic_seg/PQ_th']:.1f}",
    ),
    (
        "quick recipe on the H200: training time (hand-kept log)",
        r"quick R-FPN C-RBP recipe, 1750 steps \| NVIDIA H200 [^|]*\| (\d+ min \d+ s) \|",
        "rfpn_quick_cuda",
        lambda records: "{} min {} s".format(*divmod(records[0]["training_seconds"], 60)),
    ),
    (
        "make demo's R-FPN training step (s)",
        r"the same in `make demo` \(CPU\) \| [^|]* \| (\d+) s \(whole step\)",
        "demo",
        lambda records: str(
            next(s["seconds"] for s in records[0]["steps"] if s["step"] == "rfpn_train")
        ),
    ),
]


def load_records(path: PathLike) -> List[dict]:
    """The records of a results JSON: its list, or the one dict."""
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, list) else [data]


def render(name: str, records: List[dict]) -> str:
    """NAME.md's text as the code of :data:`RENDERERS` renders it from ``records``
    (``function(records, name)``)."""
    module, function = RENDERERS[name].split(":")
    text = getattr(importlib.import_module(module), function)(records, name)
    return text.rstrip("\n") + "\n"


def missing_provenance(record: dict) -> List[str]:
    """The provenance fields ``record`` lacks (top level or in its ``provenance`` dict)."""
    inner = record.get("provenance") or {}
    machine = record.get("machine") if isinstance(record.get("machine"), dict) else {}
    missing = [
        f for f in PROVENANCE_FIELDS if f not in record and f not in inner and f not in machine
    ]
    if inner and any(inner.get(f) is None for f in PROVENANCE_FIELDS) and not inner.get("note"):
        missing.append("provenance.note (why some fields are null)")
    return missing


def _absolute_paths(value: Any) -> List[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    if isinstance(value, str):
        return re.findall(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt)/[^\s'\"]*", value)
    return []


def block_names(readme_text: str) -> List[str]:
    return [m.group("name") for m in _BLOCK.finditer(readme_text)]


def check_results(readme_path: PathLike, results_dir: PathLike) -> List[str]:
    """Every way README.md and the records under ``results_dir`` disagree (empty: none)."""
    with open(readme_path) as f:
        readme = f.read()
    problems: List[str] = []
    updated, missing_md = update_readme_blocks(readme, results_dir)
    problems += [f"{name}: no {name}.md for its README block" for name in missing_md]
    if updated != readme:
        stale = [
            n
            for n in block_names(readme)
            if _block(readme, n) != _block(updated, n) and n not in missing_md
        ]
        problems += [f"{n}: the README block differs from {n}.md" for n in stale]
    for name in block_names(readme):
        json_path = os.path.join(results_dir, name + ".json")
        if not os.path.exists(json_path):
            problems.append(f"{name}: no {name}.json (the block has no record)")
            continue
        records = load_records(json_path)
        for i, record in enumerate(records):
            lacking = missing_provenance(record)
            if lacking:
                problems.append(f"{name}.json record {i}: no {', '.join(lacking)}")
                break
        if name in RENDERERS:
            with open(os.path.join(results_dir, name + ".md")) as f:
                if f.read() != render(name, records):
                    problems.append(f"{name}: {name}.md is not what its code renders from the JSON")
    for path in sorted(os.listdir(results_dir)):
        if path.endswith(".json"):
            with open(os.path.join(results_dir, path)) as f:
                found = _absolute_paths(json.load(f))
            if found:
                problems.append(f"{path}: absolute path(s) {found[:3]}")
    for what, pattern, name, expected in TRACKED:
        if not os.path.exists(os.path.join(results_dir, name + ".json")):
            continue  # (another README's results: nothing of this project's to track)
        match = re.search(pattern, readme)
        if match is None:
            problems.append(f"tracked number not found in the README: {what}")
            continue
        want = expected(load_records(os.path.join(results_dir, name + ".json")))
        if match.group(1) != want:
            problems.append(f"{what}: the README says {match.group(1)!r}, {name}.json {want!r}")
    return problems


def _block(text: str, name: str) -> str:
    for match in _BLOCK.finditer(text):
        if match.group("name") == name:
            return match.group("body")
    return ""


def first_commit_of(path: PathLike) -> str:
    """The commit that added ``path`` to git (its record's code was at or before it)."""
    out = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", os.path.abspath(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.abspath(path)),
    ).stdout.split()
    if not out:
        raise ValueError(f"{path} is not in git: no commit to record")
    return out[-1]


def backfill_provenance(path: PathLike, date: str, shared: Sequence[bool] = ()) -> int:
    """Give every record of ``path`` lacking provenance fields a ``provenance`` dict: the
    fields the record carries (``device`` also from ``machine``), the commit that added the file
    as ``git_commit`` (recorded as such), ``null`` for what was not recorded when it was
    measured, and a note saying so. Returns how many records changed."""
    with open(path) as f:
        data = json.load(f)
    records = data if isinstance(data, list) else [data]
    commit = first_commit_of(path)
    changed = 0
    for record in records:
        if not missing_provenance(record):
            continue
        machine = record.get("machine")
        provenance = {
            "device": record.get("device", machine if isinstance(machine, str) else None),
            "torch": record.get("torch"),
            "threads": record.get("threads"),
            "git_commit": commit,
            "shared_machine": record.get("shared_machine"),
            "note": f"backfilled {date}: git_commit added the file; null: not recorded",
        }
        if isinstance(machine, dict):
            for key in ("device", "torch", "threads"):
                provenance[key] = provenance[key] or machine.get(key)
        record["provenance"] = provenance
        changed += 1
    if changed:
        atomic_write_json(data, path, indent=json_indent(path))
    return changed


def json_indent(path: PathLike) -> int:
    """The indent a JSON file was written with (the leading spaces of its second line; 2 if
    none), so that rewriting it changes only what changed."""
    with open(path) as f:
        f.readline()
        second = f.readline()
    return (len(second) - len(second.lstrip(" "))) or 2
