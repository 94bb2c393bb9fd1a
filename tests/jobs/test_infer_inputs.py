"""Infer inputs: globs, safe member names, streaming readers, content keys, decode safeguards."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vlmjobs.recipes.infer.inputs import (
    byte_limit,
    count_items,
    decode_image,
    iter_items,
    matches,
    read_sources,
    split_source,
    unsafe_member_reason,
)


def png(w: int = 40, h: int = 30, color: str = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("name", "include", "exclude", "expected"),
    [
        ("a/b/c.png", [], [], True),  # case: default image globs match at any depth
        ("a/b/c.PNG", [], [], True),  # case: case-insensitive
        ("notes.txt", [], [], False),  # case: not an image suffix
        ("a/c.png", ["*.jpg"], [], False),  # case: include narrows
        ("a/c.png", ["a/*"], [], True),  # case: a pattern with / matches the relative path
        ("b/c.png", ["a/*"], [], False),  # case: ... and only that path
        ("a/thumbs/c.png", [], ["*/thumbs/*"], False),  # case: exclude wins
        ("a/c.png", [], ["*.jpg"], True),  # case: exclude that does not hit
    ],
)
def test_matches(name: str, include: list[str], exclude: list[str], expected: bool) -> None:
    assert matches(name, include, exclude) is expected


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("img/a.png", False),  # case: plain relative
        ("a..b.png", False),  # case: dots inside a name are fine
        ("../x.png", True),  # case: parent component
        ("img/../../x.png", True),  # case: parent component in the middle
        ("/etc/x.png", True),  # case: absolute
        ("..\\x.png", True),  # case: windows separator
        ("C:/x.png", True),  # case: drive letter
    ],
)
def test_unsafe_member_reason(name: str, unsafe: bool) -> None:
    reason = unsafe_member_reason(name)
    assert (reason is not None) is unsafe
    if unsafe:
        assert "unsafe archive member name" in reason and repr(name) in reason


def exif_rotated() -> bytes:
    """A 40x30 JPEG whose EXIF says 'rotate 90': displayed as 30x40."""
    image = Image.new("RGB", (40, 30), "blue")
    exif = image.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "limit", "size", "error"),
    [
        (png(), 10_000, (40, 30), None),  # case: ok
        (png(mode="L"), 10_000, (40, 30), None),  # case: grayscale -> RGB
        (png(mode="RGBA"), 10_000, (40, 30), None),  # case: alpha -> RGB
        (exif_rotated(), 10_000, (30, 40), None),  # case: EXIF orientation applied
        (b"", 10_000, None, "empty file (0 bytes)"),  # case: zero-byte
        (b"just some text\n", 10_000, None, "not an image"),  # case: non-image
        (png(400, 300)[:300], 10**6, None, "corrupt image"),  # case: truncated PNG
        (png(200, 100), 19_999, None, "decompression bomb: 200x100"),  # case: over our limit
        (png(200, 100), 20_000, (200, 100), None),  # case: exactly at the limit
    ],
)
def test_decode_image(data: bytes, limit: int, size: tuple | None, error: str | None) -> None:
    out = decode_image(data, max_image_pixels=limit)
    if error is None:
        assert out.error is None and out.image is not None
        assert out.image.size == size and out.image.mode == "RGB"
    else:
        assert out.image is None and out.error is not None and out.error.startswith(error)


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    """A folder (nested, a duplicate, a non-image); a tar.gz and a zip, each with a bad member."""
    imgs = {f"sub/{i}.png": png(20 + i, 10, "green") for i in range(3)}
    folder = tmp_path / "folder"
    for name, data in imgs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "dup.png").write_bytes(imgs["sub/0.png"])
    (folder / "readme.txt").write_text("not listed by the default globs")
    tgz = tmp_path / "a.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in [*imgs.items(), ("../evil.png", png())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    zpath = tmp_path / "a.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("dir/", "")
        for name, data in imgs.items():
            zf.writestr(name, data)
        zf.writestr("/abs.png", png())
    return {"imgs": imgs, "folder": folder, "tgz": tgz, "zip": zpath, "tmp": tmp_path}


def test_folder_items_are_keyed_by_content(tree: dict) -> None:
    items = list(iter_items([tree["folder"]], [], []))
    assert [Path(i.source).relative_to(tree["folder"]).as_posix() for i in items] == [
        "dup.png",
        "sub/0.png",
        "sub/1.png",
        "sub/2.png",
    ]
    assert items[0].key == items[1].key == sha(tree["imgs"]["sub/0.png"])
    assert all(i.error is None and sha(i.data) == i.key for i in items)
    assert count_items([tree["folder"]], [], []) == 4


def test_tar_is_streamed_and_unsafe_members_fail(tree: dict) -> None:
    items = list(iter_items([tree["tgz"]], [], []))
    names = [i.source.split("!")[1] for i in items]
    assert names == [*tree["imgs"], "../evil.png", "link.png"]
    assert [sha(tree["imgs"][n]) for n in tree["imgs"]] == [i.key for i in items[:3]]
    assert items[3].data is None and "unsafe archive member name" in items[3].error
    assert items[4].data is None and "symbolic link to '/etc/passwd'" in items[4].error
    assert count_items([tree["tgz"]], [], []) == len(items)  # counted from the headers


def test_plain_tar_is_counted_by_seeking(tree: dict) -> None:
    plain = tree["tmp"] / "plain.tar"
    with tarfile.open(tree["tgz"], "r:gz") as src, tarfile.open(plain, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    items = list(iter_items([plain], [], []))
    assert count_items([plain], [], []) == len(items) == 5  # the link is a failed item


def test_zip_members_and_absolute_names(tree: dict) -> None:
    items = list(iter_items([tree["zip"]], ["*.png"], ["sub/2.png"]))
    assert [i.source.split("!")[1] for i in items] == ["sub/0.png", "sub/1.png", "/abs.png"]
    assert items[2].error.endswith("absolute path")
    assert count_items([tree["zip"]], ["*.png"], ["sub/2.png"]) == 3


def test_bad_archive_fails_as_one_item_and_the_rest_goes_on(tree: dict) -> None:
    bad = tree["tmp"] / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    lst = tree["tmp"] / "list.txt"
    lst.write_text("# a comment\n\nfolder/sub/1.png\n")
    items = list(iter_items([bad, lst], [], []))
    assert items[0].source == str(bad) and items[0].error.startswith("unreadable archive")
    assert items[1].key == sha(tree["imgs"]["sub/1.png"])
    assert count_items([lst], [], []) == 1
    assert count_items([bad, lst], [], []) == len(items) == 2


def test_read_sources_reads_members_back(tree: dict) -> None:
    wanted = [
        f"{tree['tgz']}!sub/2.png",
        str(tree["folder"] / "dup.png"),
        f"{tree['zip']}!sub/1.png",
        f"{tree['zip']}!missing.png",
    ]
    got = list(read_sources(wanted))
    assert [g[0] for g in got] == wanted
    assert got[0][1] == tree["imgs"]["sub/2.png"]
    assert got[1][1] == tree["imgs"]["sub/0.png"]
    assert got[2][1] == tree["imgs"]["sub/1.png"]
    assert got[3][1] is None and "not found" in got[3][2]


@pytest.mark.parametrize(
    ("make_archive", "source", "expected"),
    [
        (False, "x/y.png", ("x/y.png", None)),  # case: plain path
        (True, "{a}!m/n.png", ("{a}", "m/n.png")),  # case: archive member
        (True, "{a}!m!n.png", ("{a}", "m!n.png")),  # case: '!' inside the member name
        (False, "dir!x.png", ("dir!x.png", None)),  # case: '!' in a plain path
    ],
)
def test_split_source(tmp_path: Path, make_archive: bool, source: str, expected: tuple) -> None:
    archive = tmp_path / "a.zip"
    if make_archive:
        zipfile.ZipFile(archive, "w").close()
    path, member = split_source(source.format(a=archive))
    assert (str(path), member) == (expected[0].format(a=archive), expected[1])


def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("s.png", tarfile.SYMTYPE, "/etc/shadow"), "a symbolic link to '/etc/shadow'"),
        (_member("h.png", tarfile.LNKTYPE, "ok.png"), "a hard link to 'ok.png'"),  # case: hard
        (_member("d.png", tarfile.DIRTYPE), "a directory"),  # case: a directory the globs select
        (_member("c.png", tarfile.CHRTYPE), "a character device"),  # case: /dev/zero-like
        (_member("b.png", tarfile.BLKTYPE), "a block device"),  # case: block device
        (_member("f.png", tarfile.FIFOTYPE), "a FIFO"),  # case: named pipe
    ],
)
def test_tar_members_that_are_not_files_fail_with_a_reason(
    tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    path = tmp_path / "a.tar"
    with tarfile.open(path, "w") as tar:
        good = png()
        info = tarfile.TarInfo("ok.png")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        tar.addfile(member)
        tar.addfile(_member("other-dir", tarfile.DIRTYPE))  # not selected by the globs: no row
    items = list(iter_items([path], [], []))
    assert [i.source.split("!")[1] for i in items] == ["ok.png", member.name]
    assert items[0].error is None and items[1].data is None
    assert reason in items[1].error


def test_zip_symlink_member_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        link = zipfile.ZipInfo("l.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    (item,) = iter_items([path], [], [])
    assert item.data is None and "symbolic link" in item.error


class Zeros(io.RawIOBase):
    """``size`` zero bytes as a stream, so a test builds a bomb without holding it."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\0" * n


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_inflation_stops_at_what_max_image_pixels_allows(tmp_path: Path, kind: str) -> None:
    size = 256 << 20  # 256 MiB of zeros: ~250 KiB compressed
    limit = byte_limit(100_000)  # 100 kpx: 1.8 MiB at most
    path = tmp_path / f"a.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            with zf.open("bomb.png", "w") as member:
                src = Zeros(size)
                while block := src.read(1 << 20):
                    member.write(block)
            zf.writestr("ok.png", png())
    else:
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for name, size_, src in [("bomb.png", size, Zeros(size)), ("ok.png", 0, None)]:
                info = tarfile.TarInfo(name)
                data = png() if src is None else None
                info.size = len(data) if data is not None else size_
                tar.addfile(info, io.BytesIO(data) if data is not None else src)
    tracemalloc.start()
    items = list(iter_items([path], [], [], limit))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert items[0].data is None and "file too large" in items[0].error
    assert items[1].error is None  # the archive goes on after the refused member
    # Never the member whole (the former reader held up to 512 MiB, twice while joining);
    # tarfile's gzip stream inflates one compressed block at a time, ~10 MiB of zeros.
    assert limit < 2 << 20 and peak < 48 << 20
