"""Where an infer job's images come from: folders, list files, tar / tar.gz / zip archives.

Everything is streamed: each archive is opened once and its members read in
order (tar in stream mode ``r|*``; zip member by member from its central
directory), one image's bytes in memory at a time, nothing extracted to disk.
Each item is keyed by the sha256 of its bytes, computed while reading, so a
resumed job can skip what is done before paying for decoding.

A source name is a path, or ``archive.tar!member/name.jpg`` for a member.
A member name that could escape a folder (absolute, or with a ``..``
component) is never opened as a file: it becomes a failed item.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from vlmjobs import settings
from vlmjobs.specs.common import outside_roots
from vlmjobs.vision.video import VIDEO_GLOBS, is_video

# What a folder contributes when the spec gives no include globs.
IMAGE_GLOBS = ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.gif", "*.tif", "*.tiff"]
DEFAULT_GLOBS = IMAGE_GLOBS + VIDEO_GLOBS
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ZIP_SUFFIXES = (".zip",)
LIST_SUFFIXES = (".txt",)
# No real image file is this large; a bigger one is refused before it is read into memory.
MAX_FILE_BYTES = 512 * 2**20
# Pillow's own default bomb limit (Image.MAX_IMAGE_PIXELS): 89.5 Mpx.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
SEP = "!"  # between an archive path and a member name in a source string


@dataclass
class RawItem:
    """One input file's bytes, or the reason it could not be read.

    ``key`` is the sha256 hex of ``data``; for an item that was never read
    (unsafe member name, unreadable archive) it is the sha256 of ``"source:" + source``.
    """

    source: str
    key: str
    data: bytes | None = None
    error: str | None = None


@dataclass
class Decoded:
    """An RGB image (EXIF orientation applied), or why there is none."""

    image: Image.Image | None
    error: str | None = None


def archive_kind(path: str | Path) -> str | None:
    """'tar' | 'zip' | 'list' for those suffixes, else None (a folder or an image)."""
    name = str(path).lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(LIST_SUFFIXES):
        return "list"
    return None


def matches(name: str, include: list[str], exclude: list[str]) -> bool:
    """Glob filter over a relative posix name, case-insensitive.

    A pattern with a ``/`` matches the whole relative name, one without matches
    the file name alone (so ``*.png`` matches at any depth). Exclude wins.
    """

    def hit(patterns: list[str]) -> bool:
        low = name.lower()
        base = low.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(low if "/" in p else base, p.lower()) for p in patterns)

    return hit(include or DEFAULT_GLOBS) and not hit(exclude)


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name could escape a folder, or None when it is safe."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return f"unsafe archive member name {name!r}: absolute path"
    if ".." in parts:
        return f"unsafe archive member name {name!r}: contains a '..' component"
    return None


def failed_key(source: str) -> str:
    return hashlib.sha256(f"source:{source}".encode()).hexdigest()


def byte_limit(max_image_pixels: int) -> int:
    """The most bytes an image file of at most ``max_image_pixels`` can need: 8 bytes a
    pixel (16-bit RGBA, the widest uncompressed layout) plus 1 MiB of headers and
    metadata, and never more than MAX_FILE_BYTES. Reading stops past it, so an archive
    member that inflates further never sits whole in memory."""
    return min(MAX_FILE_BYTES, max_image_pixels * 8 + (1 << 20))


def _read_stream(source: str, stream: IO[bytes], limit: int = MAX_FILE_BYTES) -> RawItem:
    """Read a file object in blocks, hashing as it goes; stop past ``limit`` bytes (a
    video's limit is MAX_FILE_BYTES: compressed frames, not bounded by a pixel count)."""
    limit = _limit_for(source, limit)
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    while block := stream.read(min(1 << 20, limit + 1 - size)):
        digest.update(block)
        chunks.append(block)
        size += len(block)
        if size > limit:
            return RawItem(source, failed_key(source), error=_too_large(size, limit, source))
    return RawItem(source, digest.hexdigest(), data=b"".join(chunks))


def _limit_for(source: str, limit: int) -> int:
    return max(limit, MAX_FILE_BYTES) if is_video(source) else limit


def _too_large(size: int, limit: int = MAX_FILE_BYTES, source: str = "") -> str:
    over = "more than " if size == limit + 1 else ""
    if is_video(source):
        return f"file too large ({over}{size} bytes > {limit}): cut the video; not read further"
    return (
        f"file too large ({over}{size} bytes > {limit}): more than an image within "
        "max_image_pixels can take; not read further"
    )


_TAR_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _not_a_file(member: tarfile.TarInfo) -> str:
    what = _TAR_TYPES.get(member.type, f"of tar type {member.type!r}")
    target = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
    return (
        f"archive member is {what}{target}, not a regular file: not read (links are not followed)"
    )


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _read_file(path: Path, limit: int = MAX_FILE_BYTES) -> RawItem:
    source = str(path)
    # A folder's symlink or a list file's line may point anywhere: check each file.
    refused = outside_roots(path, settings.allowed_roots(), "image")
    if refused:
        return RawItem(source, failed_key(source), error=refused)
    limit = _limit_for(source, limit)
    try:
        size = path.stat().st_size
        if size > limit:
            return RawItem(source, failed_key(source), error=_too_large(size, limit, source))
        with path.open("rb") as f:
            return _read_stream(source, f, limit)
    except OSError as e:
        return RawItem(source, failed_key(source), error=f"unreadable file: {e}")


def folder_files(folder: Path, include: list[str], exclude: list[str]) -> list[Path]:
    """Files under ``folder`` (recursive, sorted) that pass the globs."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and matches(path.relative_to(folder).as_posix(), include, exclude):
            out.append(path)
    return out


def list_file_paths(list_file: Path) -> list[Path]:
    """One path a line, relative to the list file's folder; blank and ``#`` lines skipped."""
    out = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            out.append(path if path.is_absolute() else list_file.parent / path)
    return out


def _tar_items(
    tar: tarfile.TarFile, include: list[str], exclude: list[str]
) -> Iterator[tarfile.TarInfo]:
    """The members of an open tar that become items, one rule for counting and reading:
    every member the globs select, regular file or not (a link, a directory or a device
    becomes a failed item saying what it is: it must not vanish unreported)."""
    for member in tar:
        if matches(member.name.rstrip("/"), include, exclude):
            yield member


def count_tar(path: Path, include: list[str], exclude: list[str]) -> int:
    """How many items ``iter_tar`` yields. A plain tar's headers are read by seeking past
    the data; a compressed one is decompressed once more (gzip runs at hundreds of MB/s,
    small beside labelling what it holds), so the job knows its total and ETA up front."""
    tar = tarfile.open(path, mode="r:") if _plain_tar(path) else tarfile.open(path, mode="r|*")
    with tar:
        return sum(1 for _ in _tar_items(tar, include, exclude))


def _plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) not in (b"\x1f\x8b", b"BZ", b"\xfd7")  # gzip, bzip2, xz magic


def iter_tar(
    path: Path, include: list[str], exclude: list[str], limit: int = MAX_FILE_BYTES
) -> Iterator[RawItem]:
    """Members of a tar / tar.gz in archive order, one pass, stream mode (no seeking)."""
    with tarfile.open(path, mode="r|*") as tar:
        for member in _tar_items(tar, include, exclude):
            source = f"{path}{SEP}{member.name}"
            reason = unsafe_member_reason(member.name)
            if reason is None and not member.isfile():
                reason = _not_a_file(member)
            stream = None if reason else tar.extractfile(member)
            if stream is None:
                yield RawItem(source, failed_key(source), error=reason or _not_a_file(member))
                continue
            yield _read_stream(source, stream, limit)


def zip_members(
    zf: zipfile.ZipFile, include: list[str], exclude: list[str]
) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if not i.is_dir() and matches(i.filename, include, exclude)]


def iter_zip(
    path: Path, include: list[str], exclude: list[str], limit: int = MAX_FILE_BYTES
) -> Iterator[RawItem]:
    """Members of a zip in central-directory order, one open member at a time."""
    with zipfile.ZipFile(path) as zf:
        for info in zip_members(zf, include, exclude):
            source = f"{path}{SEP}{info.filename}"
            if reason := unsafe_member_reason(info.filename):
                yield RawItem(source, failed_key(source), error=reason)
            elif _zip_is_symlink(info):
                error = "archive member is a symbolic link, not a regular file: not read"
                yield RawItem(source, failed_key(source), error=error)
            elif info.file_size > _limit_for(source, limit):  # may lie: the read is capped too
                error = _too_large(info.file_size, _limit_for(source, limit), source)
                yield RawItem(source, failed_key(source), error=error)
            else:
                with zf.open(info) as stream:
                    yield _read_stream(source, stream, limit)


def count_items(inputs: Iterable[str | Path], include: list[str], exclude: list[str]) -> int:
    """How many items ``iter_items`` will yield (an unreadable archive counts as its one
    failed item, as ``iter_items`` reports it)."""
    total = 0
    for raw in inputs:
        path = Path(raw).expanduser()
        kind = archive_kind(path)
        if path.is_dir():
            total += len(folder_files(path, include, exclude))
        elif kind in ("tar", "zip"):
            try:
                if kind == "tar":
                    total += count_tar(path, include, exclude)
                else:
                    with zipfile.ZipFile(path) as zf:
                        total += len(zip_members(zf, include, exclude))
            except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError):
                total += 1
        elif kind == "list":
            total += len(list_file_paths(path))
        else:
            total += 1
    return total


def iter_items(
    inputs: Iterable[str | Path],
    include: list[str],
    exclude: list[str],
    limit: int = MAX_FILE_BYTES,
) -> Iterator[RawItem]:
    """Every input item in order: folders recursively, list files line by line, archives streamed.

    A whole archive that turns out unreadable (truncated, not an archive) ends
    as one failed item named after it, and the remaining inputs still run.
    """
    for raw in inputs:
        path = Path(raw).expanduser()
        kind = archive_kind(path)
        if path.is_dir():
            yield from (_read_file(p, limit) for p in folder_files(path, include, exclude))
        elif kind == "list":
            yield from (_read_file(p, limit) for p in list_file_paths(path))
        elif kind in ("tar", "zip"):
            try:
                yield from (iter_tar if kind == "tar" else iter_zip)(path, include, exclude, limit)
            except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
                source = str(path)
                yield RawItem(source, failed_key(source), error=f"unreadable archive: {e}")
        else:
            yield _read_file(path, limit)


def decode_image(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Decoded:
    """Bytes -> RGB image, refusing what is empty, not an image, corrupt, or a decompression bomb.

    The pixel count is checked from the header, before any pixel is decoded.
    EXIF orientation is applied, so boxes refer to the image as it is displayed.
    """
    if not data:
        return Decoded(None, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; our own check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > max_image_pixels:
                return Decoded(None, _bomb(w, h, max_image_pixels))
            image.load()
        return Decoded(ImageOps.exif_transpose(image).convert("RGB"))
    except Image.DecompressionBombError as e:
        return Decoded(None, f"decompression bomb: {e}")
    except UnidentifiedImageError:
        return Decoded(None, "not an image: Pillow cannot identify the file's format")
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's plugins raise all three on bad data
        return Decoded(None, f"corrupt image: {e}")


def _bomb(w: int, h: int, limit: int) -> str:
    return (
        f"decompression bomb: {w}x{h} = {w * h} pixels > max_image_pixels={limit}; "
        "raise max_image_pixels in the spec if the image is genuine"
    )


def split_source(source: str) -> tuple[Path, str | None]:
    """``"a.tar!x/y.png"`` -> (Path("a.tar"), "x/y.png"); a plain path -> (path, None)."""
    head, sep, member = source.partition(SEP)
    while sep:
        if archive_kind(head) in ("tar", "zip") and Path(head).is_file():
            return Path(head), member
        more_head, sep, member = member.partition(SEP)
        head = f"{head}{SEP}{more_head}"
    return Path(source), None


def read_sources(sources: list[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(source, bytes, error) for each source, in the given order.

    Members of one archive are read in one pass over it (a tar.gz cannot seek),
    so rendering N members costs one read of the archive, not N.
    """
    wanted: dict[Path, set[str]] = {}
    for source in sources:
        archive, member = split_source(source)
        if member is not None:
            wanted.setdefault(archive, set()).add(member)
    members: dict[str, bytes | None] = {}
    errors: dict[str, str] = {}
    for archive, names in wanted.items():
        kind = archive_kind(archive)
        try:
            it = iter_tar(archive, ["*"], []) if kind == "tar" else iter_zip(archive, ["*"], [])
            for item in it:
                member = item.source.partition(f"{archive}{SEP}")[2]
                if member in names:
                    members[item.source] = item.data
                    if item.error:
                        errors[item.source] = item.error
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            errors.update({f"{archive}{SEP}{n}": f"unreadable archive: {e}" for n in names})
    for source in sources:
        if split_source(source)[1] is None:
            item = _read_file(Path(source))
            yield source, item.data, item.error
        elif source in members and source not in errors:
            yield source, members[source], None
        else:
            yield source, None, errors.get(source, f"member not found in archive: {source}")
