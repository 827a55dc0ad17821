"""Output locations: checked before any work starts, written atomically with the usual permissions.

Every command that writes calls one of the ``check_*`` functions on each output it was given
*before* it loads data, samples, trains or converts, so that a typo in a path costs a one-line
error instead of an hour of compute:

* :func:`check_dir`: a folder to write into (created when missing, with its parents);
* :func:`check_file` / :func:`check_image_file`: a file (an image: an extension Pillow can write);
* :func:`check_run_dir`: a folder that holds one model or run: an existing model, run or unrelated
  folder is never replaced without ``overwrite=True``, but a command's own unfinished run (told
  apart by a marker file such as ``run.json``) is resumed.

Missing parent folders are created, consistently, by every writer (as ``save_pretrained`` always
did); a parent that is a file, or a folder that cannot be written, is an error. Files are written
through :func:`atomic_path`: a temporary file in the same folder that replaces the target only
once complete (an interrupted write never leaves half a file) and gets the mode any new file gets
under the process umask (0644 under umask 022), whatever the library that wrote it chose.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from arvision.errors import OutputError


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format from the
    extension still work); on success it gets the usual file mode and replaces ``path`` atomically,
    on failure it is removed. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of the image formats this Pillow can write."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)


def _name(option: str | None, path: Path) -> str:
    return f"{option} {path}" if option else str(path)


def check_dir(path: str | os.PathLike, option: str | None = None) -> Path:
    """``path`` can be used as an output folder: it is one, or can be created, and can be written.

    ``option`` (e.g. ``"--out"``) names the argument in the message.
    """
    p = Path(path)
    what = _name(option, p)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} is a file, but a folder is needed here: pass a folder path")
    existing = p
    while not existing.exists():  # the nearest existing ancestor is where the folders would be created
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{what}: {existing} is a file, so no folder can be created under it; choose another path")
    reason = _cannot_write(existing)
    if reason:
        raise OutputError(f"{what}: cannot write into {existing} ({reason}); choose another location "
                          "or fix its permissions")  # fmt: skip
    return p


_WRITE_CHECK = ".arvision-write-check-"


def _cannot_write(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None if one can): tried for real, since
    ``os.access`` says yes to root everywhere, also in /proc and on some read-only mounts."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=_WRITE_CHECK):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_file(path: str | os.PathLike, option: str | None = None, *, suffixes: Iterable[str] | None = None,
               kind: str = "file") -> Path:  # fmt: skip
    """``path`` can be written as a file: not a folder, a known suffix (when ``suffixes`` is given)
    and a parent folder that exists or can be created, and can be written."""
    p = Path(path)
    what = _name(option, p)
    if p.is_dir():
        example = p / ("out" + (".png" if suffixes is not None and ".png" in set(suffixes) else ".json"))
        raise OutputError(f"{what} is a folder; pass a file name for the {kind}, such as {example}")
    if suffixes is not None:
        allowed = sorted(set(suffixes))
        if p.suffix.lower() not in allowed:
            shown = ", ".join(s for s in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff", ".gif", ".npz", ".json") if s in allowed)
            raise OutputError(f"{what}: unknown {kind} extension {p.suffix or '(none)'!r}; use one of {shown or ', '.join(allowed)}")
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what}: {parent} is a file, not a folder; choose another path")
    check_dir(parent, option and f"{option} {p}: folder")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
        raise OutputError(f"{what} exists and cannot be replaced (permission denied)")
    return p


def check_image_file(path: str | os.PathLike, option: str | None = None) -> Path:
    """:func:`check_file` for an image: an extension Pillow can write (.png, .jpg, .webp, ...)."""
    return check_file(path, option, suffixes=image_extensions(), kind="image")


def check_run_dir(path: str | os.PathLike, option: str | None = None, *, overwrite: bool = False,
                  marker: str | None = None, own: Iterable[str] = (), what: str = "model") -> bool:  # fmt: skip
    """Check a folder a command writes one model or run into; True if it holds this command's own run.

    A missing or empty folder is fine. A folder holding ``marker`` (e.g. ``run.json`` or
    ``checkpoint.pt``) is this command's run: True is returned and the caller resumes it (or checks
    the marker's settings). A folder holding only files named in ``own`` (intermediate files the
    command itself writes, such as a token cache) is fine too. Anything else (a finished model, a
    converted model, another command's run, unrelated files) is refused unless ``overwrite``.
    """
    p = check_dir(path, option)
    if not p.is_dir():
        return False
    entries = sorted(e.name for e in p.iterdir())
    if marker is not None and marker in entries:
        return True
    # the write check of another process (torchrun ranks check the same folder at once) is not foreign
    foreign = [e for e in entries if e not in set(own) and not e.startswith(_WRITE_CHECK)]
    if foreign and not overwrite:
        held = "a model" if "config.json" in entries else ("a run" if "run.json" in entries or "checkpoint.pt" in entries else "files")
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise OutputError(f"{_name(option, p)} already holds {held} ({shown}); pass --overwrite to replace it with the "
                          f"new {what}, or choose another folder")  # fmt: skip
    return False


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(needed: int, what: str, fix: str) -> None:
    """Refuse up front a request whose in-memory result would not fit in physical memory."""
    total = physical_memory()
    if total is not None and needed > total:
        raise OutputError(f"{what} would need about {format_bytes(needed)} of memory, more than this machine has "
                          f"({format_bytes(total)}); {fix}")  # fmt: skip


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
