"""The output folder OUT: who may write it, where it is built, and how it replaces what was there.

A merge into OUT holds a lock beside it (`.OUT.lock`, an flock the kernel drops when the process
ends, however it ends), so a second merge into the same OUT is refused rather than interleaved. It
builds the model in `.OUT.partial`, a folder it creates itself and marks as its own; only a folder
so marked is ever reused (`--resume`) or removed. The finished folder is renamed to OUT. When OUT
exists (`--overwrite`), it is first moved aside to `.OUT.old-*`, and `.OUT.swap` records that name
until the old folder is gone: a merge killed during the swap leaves a record that the next merge
into OUT reads, restoring the old OUT (killed before the new one was in place) or removing it
(killed after).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mergesmith.errors import OutputError

log = logging.getLogger(__name__)

STAGING_MARKER = ".mergesmith-staging"  # inside the staging folder: "mergesmith made this folder"
MARKER_TEXT = "a merge in progress, made by mergesmith; --resume continues it\n"
FREE_SPACE_HINT = "free some space or choose an output folder on another disk"
# errors that mean the disk (or the user's quota on it) is full
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

InputPaths = Iterable[tuple[str, Path]]  # (what it is, e.g. "model 'a'", and a path it reads)


def partial_folder(out: Path) -> Path:
    """Where a merge into `out` is built: left behind only if the process is killed (--resume)."""
    return out.parent / f".{out.name}.partial"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def swap_record_path(out: Path) -> Path:
    return out.parent / f".{out.name}.swap"


def check_output_folder(out: Path, *, overwrite: bool, inputs: InputPaths = ()) -> None:
    """Refuse an OUT that is a file or a broken link, whose parent is missing, that is, holds or lies
    inside anything the merge reads, or that exists and is not empty (unless `overwrite`)."""
    if os.path.lexists(out) and not out.exists():
        raise OutputError(
            f"{out}: is a link to nothing ({os.readlink(out)})", hint="remove the link or choose another path"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder", hint="choose another output path")
    if not out.parent.exists():
        raise OutputError(f"{out.parent}: parent folder does not exist", hint=f"create it first: mkdir -p {out.parent}")
    check_apart_from_inputs(out, inputs)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"{out}: folder exists and is not empty", hint="choose another path, or pass --overwrite to replace it"
        )


def check_apart_from_inputs(out: Path, inputs: InputPaths) -> None:
    """OUT must not be, contain or lie inside a path the merge reads (compared with links resolved):
    replacing OUT would delete it, or writing OUT would write into a model folder."""
    where = Path(os.path.realpath(out))
    for what, path in inputs:
        real = Path(os.path.realpath(path))
        if where == real:
            relation = "is"
        elif where in real.parents:
            relation = "contains"
        elif real in where.parents:
            relation = "lies inside"
        else:
            continue
        raise OutputError(
            f"{out}: the output folder {relation} {real}, which the merge reads ({what})",
            hint="write the merged model to a folder apart from every model folder and the recipe",
        )


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse to start a merge whose output cannot fit on the disk (checked before any work)."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputError(
            f"{folder}: {needed_bytes / 1e9:.2f} GB needed for the merged model, {free / 1e9:.2f} GB free",
            hint=FREE_SPACE_HINT,
        )


def write_error(path: Path, err: OSError) -> OutputError:
    """The user's form of an OSError met while writing `path` (a full disk says how to fix it)."""
    if err.errno in DISK_FULL:
        return OutputError(f"{path}: the disk is full ({err.strerror})", hint=FREE_SPACE_HINT)
    return OutputError(f"{path}: cannot write it ({err.strerror or err})")


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold OUT for this process: a second merge into it is refused with the holder's process id.

    The lock is flock on `.OUT.lock`: the kernel releases it when the process ends, killed or not,
    so a lock file left by a killed merge holds nothing. It is removed before it is unlocked; an
    opener that got the removed file sees it is gone and opens the new one.
    """
    path = lock_path(out)
    while True:
        fd = _open_lock_file(path, out)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise OutputError(
                f"{out}: another merge into it is running" + (f" (process {holder})" if holder.isdigit() else ""),
                hint="wait for it to finish, or choose another output folder",
            ) from None
        except OSError as err:
            os.close(fd)
            raise OutputError(f"{path}: cannot lock it ({err.strerror or err})") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # removed by the merge that held it while we opened it
    with contextlib.suppress(OSError):  # the process id only makes the refusal's message better
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _open_lock_file(path: Path, out: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if os.path.lexists(path):  # a link or a folder at the lock's name: not ours to touch
            raise OutputError(
                f"{path}: is in the way of the lock file ({_describe(path)})",
                hint="move or remove it, then run again",
            ) from None
        raise OutputError(f"{out.parent}: cannot create the output there ({err.strerror or err})") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def prepare_output(out: Path, *, overwrite: bool, inputs: InputPaths = ()) -> None:
    """The checks a merge makes before it reads any tensor: no other merge holds OUT, a swap that
    was killed is undone, and OUT is fit to be written."""
    with output_lock(out):
        recover_interrupted_swap(out)
        check_output_folder(out, overwrite=overwrite, inputs=inputs)


def recover_interrupted_swap(out: Path) -> None:
    """Finish an `--overwrite` swap that a killed merge left half done (see the module docstring).
    Call it holding the lock."""
    record = swap_record_path(out)
    if not os.path.lexists(record):
        return
    aside = _read_swap_record(record, out)
    try:
        if os.path.lexists(aside) and not os.path.lexists(out):
            os.rename(aside, out)
            log.warning(
                "%s: restored the previous output from %s (a merge was killed while replacing it)", out, aside.name
            )
        elif os.path.lexists(aside):
            (out / STAGING_MARKER).unlink(missing_ok=True)  # OUT is the new folder; the marker may be left
            _remove(aside)
            log.warning(
                "%s: removed %s, the previous output, which a merge killed after replacing it had left", out, aside.name
            )
        record.unlink()
    except OSError as err:
        raise OutputError(
            f"{record}: cannot finish the interrupted replacement of {out} ({err.strerror or err})",
            hint=f"the previous output is {aside}: move it back to {out}, or remove it; then remove {record.name}",
        ) from None


def _read_swap_record(record: Path, out: Path) -> Path:
    """The aside folder a swap record names, checked: it is a file in the user's folder."""
    pattern = rf"\.{re.escape(out.name)}\.old-[0-9a-f]{{16}}"
    try:
        info = os.lstat(record)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            raise ValueError("not a small file")
        name = json.loads(record.read_text(encoding="utf-8"))["aside"]
        if not isinstance(name, str) or not re.fullmatch(pattern, name):
            raise ValueError("names no folder of the form .OUT.old-*")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise OutputError(
            f"{record}: not a record of an interrupted merge that mergesmith can read",
            hint=f"a folder .{out.name}.old-* beside it is the previous {out.name}; then remove {record.name}",
        ) from None
    aside = out.parent / name
    if os.path.lexists(aside) and not _is_real_folder(aside):
        raise OutputError(f"{aside}: named by {record.name}, but it is not a folder ({_describe(aside)})")
    return aside


@contextmanager
def staging_folder(
    out: Path, *, overwrite: bool, needed_bytes: int = 0, resume: bool = False, inputs: InputPaths = ()
) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block ends without error.

    Holds OUT's lock throughout. `out`, the paths the merge reads, and the free space for
    `needed_bytes` are checked first. On any exception (KeyboardInterrupt included) the temporary
    folder is removed and `out` is left exactly as it was; only a killed process leaves it, and
    `resume` then builds on it.
    """
    with output_lock(out):
        recover_interrupted_swap(out)
        check_output_folder(out, overwrite=overwrite, inputs=inputs)
        staging, fresh = _take_staging(out, resume=resume)
        try:
            if fresh:
                check_free_space(out.parent, needed_bytes)
            yield staging
            _swap_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def discard_interrupted(out: Path) -> bool:
    """Remove what a killed merge into `out` left (its partial folder, if mergesmith's, and the
    lock file), where nothing will resume it; True if there was a partial folder."""
    with output_lock(out):
        staging = partial_folder(out)
        if not _is_ours(staging):
            return False
        shutil.rmtree(staging, ignore_errors=True)
        return True


def _take_staging(out: Path, *, resume: bool) -> tuple[Path, bool]:
    """The staging folder, and whether it is new: the interrupted merge's with `resume`, else a
    fresh one. Anything at that name that mergesmith did not make is refused, never followed or
    removed."""
    staging = partial_folder(out)
    if os.path.lexists(staging):
        if not _is_ours(staging):
            raise OutputError(
                f"{staging}: is in the way of the merge's temporary folder, and mergesmith did not make it "
                f"({_describe(staging)})",
                hint="move or remove it, then run again",
            )
        if resume:
            return staging, False
        log.warning("%s: removing an interrupted merge's files (--resume continues one instead)", staging)
        try:
            shutil.rmtree(staging)
        except OSError as err:
            raise OutputError(
                f"{staging}: cannot remove an interrupted merge's files ({err.strerror or err})",
                hint="remove the folder yourself (mergesmith made it), or continue it with --resume",
            ) from None
    try:
        os.mkdir(staging, 0o755)
        fd = os.open(staging / STAGING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as marker:
            marker.write(MARKER_TEXT)
    except OSError as err:
        if _is_real_folder(staging):  # made, but the marker could not be written into it
            shutil.rmtree(staging, ignore_errors=True)
        if err.errno in DISK_FULL:
            raise write_error(staging, err) from None
        raise OutputError(f"{out.parent}: cannot create the output there ({err.strerror or err})") from None
    return staging, True


def _is_ours(staging: Path) -> bool:
    """A real folder (not a link) holding mergesmith's marker file (not a link either)."""
    marker = staging / STAGING_MARKER
    try:
        if not _is_real_folder(staging) or not stat.S_ISREG(os.lstat(marker).st_mode):
            return False
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            return file.read(len(MARKER_TEXT) + 1) == MARKER_TEXT.encode()
    except OSError:
        return False


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _describe(path: Path) -> str:
    if os.path.islink(path):
        return f"a link to {os.readlink(path)}"
    return "a folder" if _is_real_folder(path) else "a file"


def _swap_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`; an existing OUT is moved aside first, recorded
    in the swap record until it is removed, so a kill at any point can be undone. The marker goes
    with the folder and is removed from OUT last: until then the staging folder is recognisably ours."""
    try:
        if not os.path.lexists(out):
            os.rename(staging, out)
            (out / STAGING_MARKER).unlink()
            return
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:16]}"
        record = swap_record_path(out)
        _write_durably(record, json.dumps({"aside": aside.name, "out": out.name}) + "\n")
        try:
            os.rename(out, aside)
        except BaseException:
            record.unlink()
            raise
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(aside, out)
            record.unlink()
            raise
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"{out}: cannot move the merged model into place ({err.strerror or err})") from err
    try:
        (out / STAGING_MARKER).unlink()
        _remove(aside)
        record.unlink()
    except OSError as err:  # the merge is done; the record makes the next merge into OUT try again
        log.warning("%s: merged, but the previous output %s could not be removed yet (%s)", out, aside, err)


def _write_durably(path: Path, text: str) -> None:
    """Create `path` holding `text`, on the disk (and in its folder) before this returns: the
    renames that follow must not reach the disk before the record of them does."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise OutputError(f"{path}: exists; another program is replacing this output folder") from None
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _remove(path: Path) -> None:
    """Remove a folder we made or moved, or a link at its place (never what a link points to)."""
    if _is_real_folder(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
