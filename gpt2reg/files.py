"""Every file gpt2reg writes goes through here: checked target, temporary name, fsync, rename, cleanup.

Two steps, so that a bad location fails before any long work starts:

- ``check_file`` / ``check_folder`` look at the target first (its folder can be created and written,
  it is not the wrong kind of thing, no name is too long, no unrelated file is overwritten without
  ``force``) and raise ``OutputError`` with one line: what, where, what to do.
- ``staged(...)`` writes: each file goes to a hidden temporary folder beside its target (same file
  system, so the final rename is atomic and a file keeps its final name inside, which ONNX external
  data needs), is synced, and is renamed into place in the order the files were staged. On any
  failure - an ``OSError``, a library's own error such as safetensors' or torch.save's on a full disk,
  Ctrl-C - the temporaries and every folder this write created are removed, and the error is
  re-raised as ``OutputError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

TEMP_MARK = ".tmp-"  # in every temporary name: ``.NAME.tmp-PID-HEX``; stale ones are safe to delete
_DEFAULT_NAME_MAX = 255

# errno -> what to do about it, for the one-line message
_ADVICE = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space (disk quota exceeded) or write somewhere else",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.EACCES: "no permission; choose a location you can write to",
    errno.EPERM: "no permission; choose a location you can write to",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another location",
    errno.EEXIST: "choose another name",
}


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up: it does not exist (the name check says why)
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    """The nearest part of ``path`` that exists (the folder a write would have to create the rest in)."""
    current = path
    while not _exists(current) and current != current.parent:
        current = current.parent
    return current


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_location(path: Path, what: str, option: str) -> None:
    """The folder ``path`` goes into exists or can be created, and can be written; no name is too long."""
    path = Path(os.path.abspath(path))
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {what} {path}: {ancestor} is a file, not a folder; choose another location "
                          f"({option})")
    limit = _name_max(ancestor)
    for part in path.relative_to(ancestor).parts:
        if len(part.encode()) > limit:
            raise OutputError(f"cannot write {what}: the name '{part[:24]}...' in {ancestor} is "
                              f"{len(part.encode())} bytes, longer than the file system's limit of {limit}; "
                              f"use a shorter name ({option})")
    if _read_only(ancestor):
        raise OutputError(f"cannot write {what} {path}: {ancestor} is on a read-only file system; choose another "
                          f"location ({option})")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: no permission to write in {ancestor}; choose another "
                          f"location ({option})")


def check_file(path: str | os.PathLike, *, what: str = "the file", force: bool = False, option: str = "-o",
               owned: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``path`` can be written as a file and return it (expanded); raise ``OutputError`` if not.

    An existing file is overwritten only with ``force`` or when ``owned(path)`` says it is ours to
    replace (e.g. an ONNX export over an earlier export).
    """
    target = Path(path).expanduser()
    if str(path) == "" or target.name in ("", ".", ".."):
        raise OutputError(f"cannot write {what} to '{path}': give a file name ({option})")
    _check_location(target, what, option)
    if _is_dir(target):
        raise OutputError(f"cannot write {what} to {target}: it is a folder; give a file name ({option})")
    if _exists(target) and not force and not (owned is not None and owned(target)):
        whose = " and was not written by gpt2reg" if owned is not None else ""
        raise OutputError(f"{target} already exists{whose}; pass --force to overwrite it, or choose another name "
                          f"({option})")
    return target


def check_folder(path: str | os.PathLike, *, what: str = "the folder", force: bool = False, option: str = "-o",
                 reusable: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``path`` can be written as a folder and return it; raise ``OutputError`` if not.

    A non-empty existing folder is accepted only with ``force`` or when ``reusable(path)`` says so.
    """
    target = Path(path).expanduser()
    if str(path) == "":
        raise OutputError(f"cannot write {what} to '': give a folder ({option})")
    _check_location(target / "x", what, option)
    if _exists(target) and not _is_dir(target):
        raise OutputError(f"cannot write {what} to {target}: it is a file, not a folder; choose another location "
                          f"({option})")
    if _is_dir(target) and not force and any(target.iterdir()) and not (reusable is not None and reusable(target)):
        raise OutputError(f"{target} is not empty; pass --force to write into it, or choose another folder "
                          f"({option})")
    return target


def describe(exc: BaseException) -> str:
    """A write failure in a few words plus what to do, whatever library raised it."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code is None:  # safetensors (SafetensorError), torch.save (RuntimeError) and friends
        lowered = text.lower()
        if "no space left" in lowered or "storagefull" in lowered or "code: 28" in lowered:
            code = errno.ENOSPC
        elif "read-only file system" in lowered or "code: 30" in lowered:
            code = errno.EROFS
        elif "file write failed" in lowered or "unexpected pos" in lowered:
            return "the write failed (is the disk full?); free some space or write somewhere else"
    if code is not None:
        reason = os.strerror(code).lower()
        advice = _ADVICE.get(code)
        return f"{reason}; {advice}" if advice else reason
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class Staging:
    """The files of one write: ask for each file's temporary path with ``path(name)``."""

    def __init__(self, folder: Path, temp: Path) -> None:
        self.folder = folder
        self.temp = temp
        self.names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write the file that will become ``folder/name`` (same name, in the temporary folder)."""
        if name not in self.names:
            self.names.append(name)
        return self.temp / name

    def extra(self, name: str) -> Path:
        """A scratch file in the temporary folder that is never moved into place."""
        return self.temp / name


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_folders(folder: Path, created: list[Path]) -> None:
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for part in reversed(missing):
        part.mkdir()
        created.append(part)


def _remove(temp: Path | None, created: list[Path]) -> None:
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty: never a file someone else put there meanwhile
        except OSError:
            pass


@contextlib.contextmanager
def staged(folder: str | os.PathLike, *, what: str, option: str = "-o", replace: bool = True,
           created: list[Path] | None = None) -> Iterator[Staging]:
    """Write files into ``folder`` all-or-nothing; see the module docstring.

    ``replace=False`` refuses to move a file over one that appeared meanwhile. ``created`` collects
    the folders made for this write (the caller may add to it; all are removed on failure).
    """
    folder = Path(folder).expanduser()
    made: list[Path] = created if created is not None else []
    temp: Path | None = None
    try:
        _make_folders(folder, made)
        temp = folder / f".{folder.name[:40] or 'out'}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        stage = Staging(folder, temp)
        yield stage
        for name in stage.names:
            _fsync(stage.temp / name)
            for extra in stage.temp.glob(f"{name}.data"):  # ONNX external data travels with its graph
                if extra.name not in stage.names:
                    stage.names.insert(stage.names.index(name), extra.name)
        for name in stage.names:
            source, target = stage.temp / name, folder / name
            if not source.exists():
                continue
            if not replace and target.exists():
                raise OutputError(f"{target} appeared while it was being written; nothing was replaced")
            os.replace(source, target)
        _fsync(folder)
    except OutputError:
        _remove(temp, made)
        raise
    except BaseException as exc:
        _remove(temp, made)
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)) or _is_user_error(exc):
            raise
        raise OutputError(f"could not write {what} to {folder}: {describe(exc)} ({option})") from None
    else:
        _remove(temp, [])


def _is_user_error(exc: BaseException) -> bool:
    from .errors import Gpt2regError

    return isinstance(exc, Gpt2regError)


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "the file", option: str = "-o") -> Path:
    """``data`` as ``path``, all or nothing."""
    path = Path(path)
    with staged(path.parent, what=what, option=option) as stage:
        stage.path(path.name).write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str, *, what: str = "the file", option: str = "-o") -> Path:
    return write_bytes(path, text.encode("utf-8"), what=what, option=option)


def write_json(path: str | os.PathLike, data: Any, *, what: str = "the file", option: str = "-o") -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n", what=what, option=option)


def append_text(path: str | os.PathLike, text: str, *, what: str = "the file", option: str = "-o") -> None:
    """Append to a log-like file (samples, metrics); a failed write is an ``OutputError``, a partial line
    is cut off again so the file stays as it was."""
    path = Path(path)
    try:
        with open(path, "a", encoding="utf-8") as f:
            start = f.tell()
            try:
                f.write(text)
                f.flush()
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
    except OSError as exc:
        raise OutputError(f"could not write {what} {path}: {describe(exc)} ({option})") from None


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Temporaries a killed process left in ``folder`` (never finished files)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp*"):  # also the ``.NAME.tmpPID`` files of gpt2reg 0.1
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
