"""Which files a command wrote into its output folder, so its next run there can tidy up after it.

A run lists the files it wrote (path relative to the folder -> sha256) in a manifest in the folder.
The next run into the folder removes the listed files it does not write again (a quick run's fewer
figures, a section or sweep left out), so no earlier run's output lies beside the new one, but only
while a file still holds the bytes the command wrote: a file the command did not write, one changed
or replaced since, one outside the folder, or one the run reads (`keep`) is never removed.

    tracked = manifest.begin(out_dir, "demo_manifest.json")   # before anything is written
    ...                                                        # the run writes its files
    removed = manifest.finish(tracked)                         # once it has written them all

A run that fails before `finish` leaves the previous manifest as it was, and removes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Iterable, NamedTuple


class Tracked(NamedTuple):
    folder: Path
    name: str                                # the manifest's file name in `folder`
    listed: dict[str, str]                   # the previous run's files: relative path -> sha256
    before: dict[str, tuple[int, int, int]]  # every file in the folder when this run began


def files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every regular file under `folder` (links not followed): relative path -> (inode, mtime, size)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            try:
                st = os.lstat(path)
            except OSError:  # gone meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                found[path.relative_to(folder).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return found


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read(folder: Path, name: str) -> dict[str, str]:
    """The files an earlier run listed in folder/name; only well-formed entries (a relative path inside
    the folder and a sha256), and none from a file that is not such a manifest."""
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(listed, dict):
        return {}
    return {rel: digest for rel, digest in listed.items()
            if isinstance(rel, str) and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
            and rel and not os.path.isabs(rel) and ".." not in Path(rel).parts and rel != name}


def begin(folder: str | Path, name: str) -> Tracked:
    """The previous run's manifest and the folder as this run finds it (the folder must exist)."""
    folder = Path(folder)
    return Tracked(folder, name, read(folder, name), files(folder))


def _remove_stale(t: Tracked, written: set[str], keep: set[str]) -> list[str]:
    root = os.path.realpath(t.folder)
    removed = []
    for rel in sorted(t.listed.keys() - written):
        if any(k == "." or rel == k or rel.startswith(k + "/") for k in keep):  # one the run read, or inside it
            continue
        path = t.folder / rel
        try:
            # not through a link to a folder elsewhere (a folder of the run's replaced by one since)
            if os.path.commonpath([root, os.path.realpath(path.parent)]) != root:
                continue
            if not stat.S_ISREG(os.lstat(path).st_mode) or sha256(path) != t.listed[rel]:
                continue
            path.unlink()
        except OSError:  # gone, unreadable or not removable: left as it is
            continue
        removed.append(rel)
        for parent in path.parents:  # rmdir removes only empty folders: nothing but ours was there
            if parent == t.folder or t.folder not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
    return removed


def finish(t: Tracked, *, keep: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Removes each file the previous run listed that this run did not write (new or replaced since
    `begin`), where it still holds the listed bytes and is not in `keep` (files or folders this run
    read), and the folders that leaves empty; then lists this run's files. Returns the paths removed."""
    root = os.path.realpath(t.folder)
    kept = set()
    for p in keep:
        real = os.path.realpath(p)
        if os.path.commonpath([root, real]) == root:  # the folder itself ("."): everything in it is kept
            kept.add(Path(os.path.relpath(real, root)).as_posix())
    written = {rel for rel, st in files(t.folder).items() if rel != t.name and t.before.get(rel) != st}
    removed = _remove_stale(t, written, kept)
    record = {}
    for rel in sorted(written):
        try:
            record[rel] = sha256(t.folder / rel)
        except OSError:  # removed meanwhile: nothing to list
            pass
    from jaxinterp import atomic

    atomic.write_json(t.folder / t.name, {"files": record})
    return removed
