"""Uploaded zip archives of class folders (``<label>/<image>``), checked before any byte is
extracted: every member's path, type, label and size, the archive's expanded total and
each member's compression ratio. A member's name is never used as a path on the server.
Training jobs extract such an archive to train on; imports store its images as items."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.errors import BadRequest, PayloadTooLarge
from app.services.catalog import LABEL_PATTERN
from model.data import IMAGE_SUFFIXES

MAX_ARCHIVE_MEMBERS = 100_000
MAX_COMPRESSION_RATIO = 200


@dataclass(frozen=True)
class Member:
    """An image in the archive: its zip entry, its class folder's name and its suffix."""

    info: zipfile.ZipInfo
    label: str
    suffix: str

    @property
    def name(self) -> str:
        """The member's name in the archive, shortened for messages."""
        return self.info.filename[-200:]


class ClassFolderArchive:
    def __init__(self, data: bytes, max_expanded_bytes: int) -> None:
        """Raises :class:`BadRequest` (or :class:`PayloadTooLarge` for the expanded size)
        for anything but a readable zip of images in class folders; members that are not
        images, folders, hidden files and macOS resource forks are skipped."""
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            entries = self._zip.infolist()
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise BadRequest(f"not a readable zip archive: {exc}") from exc
        if len(entries) > MAX_ARCHIVE_MEMBERS:
            raise BadRequest(f"archive holds more than {MAX_ARCHIVE_MEMBERS} members")
        total = 0
        self.members: list[Member] = []
        for info in entries:
            name = info.filename
            path = PurePosixPath(name.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
                raise BadRequest(f"archive member {name[:100]!r} has an unsafe path")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BadRequest(f"archive member {name[:100]!r} is a link")
            if info.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
                continue
            if len(path.parts) < 2:
                raise BadRequest("archive images must sit in class folders: <class>/<image>")
            label = path.parts[-2]
            if not LABEL_PATTERN.fullmatch(label):
                raise BadRequest(f"archive folder {label[:80]!r} is not a valid label")
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                raise BadRequest(f"archive member {name[:100]!r} expands suspiciously much")
            total += info.file_size
            if total > max_expanded_bytes:
                raise PayloadTooLarge("archive expands beyond the allowed size")
            self.members.append(Member(info, label, path.suffix.lower()))

    def read(self, member: Member) -> bytes:
        """The member's bytes. ZipExtFile stops at the declared size and checks the CRC, so
        the sizes summed when the archive was opened bound what is read."""
        try:
            with self._zip.open(member.info) as source:
                return source.read()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BadRequest(f"archive is damaged: {exc}") from exc

    def extract(self, target: Path) -> None:
        """Writes every image to ``target/<label>/<n><suffix>``."""
        try:
            for n, member in enumerate(self.members):
                class_dir = target / member.label
                class_dir.mkdir(exist_ok=True)
                with (
                    self._zip.open(member.info) as source,
                    (class_dir / f"{n}{member.suffix}").open("wb") as out,
                ):
                    shutil.copyfileobj(source, out)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BadRequest(f"archive is damaged: {exc}") from exc
