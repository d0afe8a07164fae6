"""Content-addressed image files: ``images/<first two hex digits>/<sha256>.<ext>``.

Files are written before the database row that refers to them is committed, so a committed
item always has its image; a crash in between leaves only an unreferenced file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from model.checkpoint import atomic_write_bytes

EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
    "AVIF": "avif",
    "HEIF": "heic",
}


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def path(self, image_hash: str, ext: str) -> Path:
        return self.root / image_hash[:2] / f"{image_hash}.{ext}"

    def put(self, data: bytes, ext: str) -> str:
        image_hash = self.digest(data)
        path = self.path(image_hash, ext)
        if not path.exists():
            atomic_write_bytes(path, data)
        return image_hash

    def read(self, image_hash: str, ext: str) -> bytes:
        return self.path(image_hash, ext).read_bytes()

    def remove(self, image_hash: str, ext: str) -> None:
        self.path(image_hash, ext).unlink(missing_ok=True)
