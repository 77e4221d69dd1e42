"""Atomic file writes: a temporary name in the same folder, then an atomic rename.

A crash (or a kill) while writing leaves the previous file intact and no half-written file behind.
The temporary file is fsynced before the rename and the folder after it: without the first, a power
loss can leave the new name pointing at an empty file (ext4, XFS); without the second, the rename
itself may not survive it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed onto `path`.

    Use for writers that want a file name (h5py, safetensors, matplotlib's savefig):

        with atomic_path("out.h5") as tmp:
            with h5py.File(tmp, "w") as f: ...

    The file gets the permissions of the file it replaces (as `open(path, "w")` keeps them: a
    private 0600 file stays private), or a new file's usual ones (0666 less the umask), and its owner
    and group where this process may give them (`_keep_owner`).
    """
    path = write_target(path)
    if path.is_dir():  # os.replace would refuse it, but only after the writer's work
        raise ValueError(f"path: expected a file name to write, got the folder {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, new_file_mode = _new_temporary(path)
    try:
        yield tmp
        _fsync_file(tmp)
        _keep_owner(tmp, path)  # before the chmod: a chown clears set-id bits
        # after the writer (a read-only old file's mode would have refused it) and the fsync (which
        # opens the file for writing); also mends writers that recreate the file 0600 (safetensors)
        os.chmod(tmp, _mode_of(path, default=new_file_mode))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_target(path: str | os.PathLike) -> Path:
    """The file a write to `path` lands in: a symbolic link's target (followed through every link), as
    `open(path, "w")` writes through a link. Renaming onto the link itself replaced it by a regular
    file and left its target stale. A link loop is a ValueError (open would fail with ELOOP). Writers
    that stage elsewhere than atomic_path (nugraph checkpoint.save_params' folder) stage beside it too."""
    path = Path(path)
    if not path.is_symlink():
        return path
    real = Path(os.path.realpath(path))  # non-strict: a dangling link's target is created, as open does
    if real.is_symlink():  # realpath stops at a loop and returns a link
        raise ValueError(f"path: expected a file or a symbolic link to one, got {str(path)!r}, a symbolic "
                         f"link loop (through {str(real)!r})")
    if not real.parent.is_dir():  # open fails (ENOENT); making the folders wrote where no one looks (a
        # link into an unmounted disk's mount point wrote onto the disk beneath it)
        raise ValueError(f"path: expected a symbolic link into an existing folder, got {str(path)!r}, a link "
                         f"to {str(real)!r}, whose folder does not exist")
    return real


# bytes of the target's name and suffix kept in the temporary's name: the full name (up to NAME_MAX,
# 255 bytes) plus the random part and ".tmp" went past NAME_MAX, so a target name of 240-255 bytes,
# writable itself, failed on its temporary (ENAMETOOLONG)
_TMP_NAME_BYTES, _TMP_SUFFIX_BYTES = 40, 16


def _clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes, without a trailing partial UTF-8 character."""
    return os.fsencode(text)[:limit].decode("utf-8", "ignore")


def temporary_stem(path: str | os.PathLike) -> str:
    """The start of `path`'s name that a temporary beside it carries: at most its first 40 bytes, so the
    temporary's name stays under NAME_MAX whatever the target's (also for folders staged beside theirs)."""
    return _clip_bytes(Path(path).name, _TMP_NAME_BYTES)


def _new_temporary(path: Path) -> tuple[Path, int]:
    """A new empty file beside `path` and its permissions, which the kernel set from 0666 and the umask.

    ".out.png.<random>.tmp.png": the target's suffix last, for writers that choose the format by it
    (savefig) or append one when it is missing (np.save). The name is short whatever the target's:
    at most the first 40 bytes of the target's name and a suffix of at most 16 (a longer one is no
    format's and is left out). Not mkstemp (0600) then a chmod with the umask read through os.umask:
    reading it sets the process-wide umask to 0 for a moment, and a file that another thread creates
    meanwhile (orbax's and merge's writer threads) is world-writable.
    """
    stem = temporary_stem(path)
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= _TMP_SUFFIX_BYTES else ""
    for _ in range(100):
        tmp = path.parent / f".{stem}.{secrets.token_hex(8)}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"no free temporary name beside {path} after 100 tries")


def visible_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """The files of `folder` matching the glob `pattern`, sorted, without hidden ones: pathlib's glob
    matches names with a leading dot, so a write killed midway (its temporary
    ".model.safetensors.<random>.tmp.safetensors") would be taken for one of the folder's files."""
    return sorted(f for f in Path(folder).glob(pattern) if not f.name.startswith(".") and f.is_file())


def _mode_of(path: Path, *, default: int) -> int:
    """The permission bits of the regular file at `path` (no set-id bits), or `default` if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return default
    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else default


def _keep_owner(tmp: Path, path: Path) -> None:
    """Gives `tmp` the owner and group of the regular file at `path`, as far as this process may: root
    both, another user a group of theirs. The rename otherwise handed a file that open(path, "w") would
    have left with its owner to whoever wrote it (a shared project's group lost a 0660 file it could
    read; since 49bbea2 also the target of a link written through). Best effort: not permitted, or no
    chown (Windows), the writer's stay."""
    try:
        old, new = os.stat(path), os.stat(tmp)
    except OSError:
        return
    if not stat.S_ISREG(old.st_mode) or (old.st_uid, old.st_gid) == (new.st_uid, new.st_gid):
        return
    chown = getattr(os, "chown", None)
    for uid in (old.st_uid, -1):  # the owner needs privilege; the group only membership
        try:
            chown(tmp, uid, old.st_gid)
            return
        except (OSError, TypeError):
            continue


def _fsync_file(path: Path) -> None:
    # the writer (h5py, safetensors, ...) has closed the file; reopen it to flush its data to disk
    fd = os.open(path, os.O_RDWR)  # Windows can only fsync (_commit) a handle open for writing
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Best effort: some platforms (Windows) and file systems cannot open or fsync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically and returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically and returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def _strict(obj):
    """obj with every non-finite float (NaN, inf; numpy's too) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> Path:
    """Writes `obj` as strict JSON atomically and returns the path. A figure that is not a number
    (the efficiency of a class with no hits, a diverged loss) is written as null: json.dumps would
    write a bare NaN, which is not JSON (jq, JavaScript and strict parsers refuse the file)."""
    return write_text(path, json.dumps(_strict(obj), indent=indent, allow_nan=False))
