"""`jaxinterp demo --out DIR`: runs each capability on built-in data and writes DIR/index.html.

Each capability adds one section: a function `section(out_dir, *, quick) -> report.Section` named
in SECTIONS. A section that fails is shown as its error in the report (and makes the command exit
non-zero), so one broken capability does not hide the others.

The files a run writes are listed in DIR/demo_manifest.json; a later run into DIR removes those
listed files it does not write again (and only while they hold the bytes the demo wrote), so no
earlier run's figure lies beside the new report. Files the demo did not write are never removed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import stat
import sys
import time
import traceback
from pathlib import Path

from jaxinterp.cliargs import output_folder

# "module:function" of each section, in the order the report shows them.
SECTIONS = [
    "jaxinterp.transformer.demo:section",
    "jaxinterp.toyworld.demo:section",
    "jaxinterp.lens.demo:section",
    "jaxinterp.merge.demo:section",
    "jaxinterp.nugraph.demo:section",
    "jaxinterp.nugraph.demo_events:section",
    "jaxinterp.inject.demo:section",
]


TITLE = "jaxinterp demo"
# The files a run wrote (path relative to the folder -> sha256), so the next run into the folder can
# remove those of them it does not write again (a quick run's fewer event displays, a section left
# out by --only): the report embeds its images, but PNGs of an earlier run beside it mislead.
MANIFEST = "demo_manifest.json"


def _check_own_index(index: Path) -> None:
    """A ValueError unless `index` is absent or a report an earlier demo wrote (its title): a page the
    user saved in the --out folder (a site's own index.html) was silently replaced by the report."""
    if not index.exists():
        return
    if not index.is_file():
        raise ValueError(f"out_dir: expected a folder where {index.name} can be written, got {index} (not a file)")
    try:
        with open(index, "rb") as f:
            head = f.read(1024).decode("utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"out_dir: {index} exists and cannot be read ({e.strerror}): cannot tell whether an "
                         f"earlier demo wrote it") from None
    if f"<title>{TITLE}</title>" not in head:
        raise ValueError(f"out_dir: expected a new folder or one an earlier `jaxinterp demo` wrote, got {index.parent} "
                         f"holding an {index.name} that is not a demo report (move it, or give another --out)")


def _files(out_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Every regular file under `out_dir` (links not followed): relative path -> (inode, mtime, size)."""
    found = {}
    for root, _, names in os.walk(out_dir):
        for name in names:
            path = Path(root) / name
            try:
                st = os.lstat(path)
            except OSError:  # gone meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                found[path.relative_to(out_dir).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(out_dir: Path) -> dict[str, str]:
    """The files an earlier run recorded in out_dir/MANIFEST; only well-formed entries (a relative path
    inside the folder and a sha256), and none from a file that is not such a manifest."""
    try:
        data = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {rel: digest for rel, digest in files.items()
            if isinstance(rel, str) and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
            and rel and not os.path.isabs(rel) and ".." not in Path(rel).parts and rel != MANIFEST}


def _remove_stale(out_dir: Path, listed: dict[str, str], written: set[str]) -> list[str]:
    """Removes each file of `listed` (an earlier run's) that this run did not write, where it still
    holds the bytes that run wrote (a file changed or replaced since is someone else's: kept), and
    the folders that leaves empty. Returns the paths removed."""
    removed = []
    for rel in sorted(listed.keys() - written):
        path = out_dir / rel
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode) or _sha256(path) != listed[rel]:
                continue
            path.unlink()
        except OSError:  # gone, unreadable or not removable: left as it is
            continue
        removed.append(rel)
        for folder in path.parents:  # rmdir removes only empty folders: nothing but ours was there
            if folder == out_dir or out_dir not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break
    return removed


def run(out_dir: str | Path, *, quick: bool = False, only: list[str] | None = None) -> tuple[Path, list[str]]:
    """Builds every section and writes out_dir/index.html. Returns the path and the failed sections."""
    from tqdm import tqdm

    from jaxinterp import atomic, benchtools, report
    from jaxinterp.checks import select_by_parts

    names = select_by_parts(only, SECTIONS, "section")
    out_dir = Path(out_dir)
    _check_own_index(out_dir / "index.html")  # before any section writes its figures
    out_dir.mkdir(parents=True, exist_ok=True)
    listed, before = _read_manifest(out_dir), _files(out_dir)
    sections, failed = [], []
    for spec in tqdm(names, desc="demo sections", unit="section"):
        module, func = spec.split(":")
        t0 = time.perf_counter()
        try:
            sec = getattr(importlib.import_module(module), func)(out_dir, quick=quick)
            # checked here, inside the try: a title that is not text failed later, in render, after
            # every section had run, and no index.html was written at all
            if not (isinstance(sec, report.Section) and isinstance(sec.title, str) and isinstance(sec.html, str)):
                raise TypeError(f"{spec}: expected a report.Section(title: str, html: str), got {sec!r:.200}")
            sections.append(sec._replace(html=sec.html + f"<p><small>{time.perf_counter() - t0:.1f} s</small></p>"))
        except Exception as e:  # noqa: BLE001 -- shown in the report, counted in the exit code
            failed.append(spec)
            sections.append(report.Section(spec, f"<div class='err'>{report.html.escape(traceback.format_exc())}</div>"))
            # the reason on the terminal too, as it happens (it was only in index.html)
            why = "".join(traceback.format_exception_only(e)).strip().splitlines()[-1]
            tqdm.write(f"section failed: {spec}: {why} (traceback in {out_dir / 'index.html'})", file=sys.stderr)
    index = out_dir / "index.html"
    atomic.write_text(index, report.render(TITLE, sections, footer=f"Run on {benchtools.machine_line()}"))
    # what this run wrote: the files that are new or were replaced since it began
    written = {rel for rel, st in _files(out_dir).items() if rel != MANIFEST and before.get(rel) != st}
    removed = _remove_stale(out_dir, listed, written)
    if removed:
        tqdm.write(f"removed {len(removed)} file(s) an earlier demo wrote into {out_dir} and this run did not: "
                   f"{', '.join(removed)}", file=sys.stderr)
    record = {}
    for rel in sorted(written):
        try:
            record[rel] = _sha256(out_dir / rel)
        except OSError:  # removed meanwhile: nothing to record
            pass
    atomic.write_json(out_dir / MANIFEST, {"files": record})
    return index, failed


def _command(args) -> int:
    index, failed = run(args.out, quick=args.quick, only=args.only)
    print(f"wrote {index}")
    for f in failed:
        print(f"section failed: {f}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run every capability on built-in data; write DIR/index.html")
    p.add_argument("--out", default="demo_out", type=output_folder, help="output folder (default demo_out)")
    p.add_argument("--quick", action="store_true", help="smaller runs")
    # nargs "+": `--only` with no name (an empty shell variable) is refused, not a run of every section
    p.add_argument("--only", nargs="+", help="only the sections whose name contains one of these")
    p.set_defaults(func=_command)
