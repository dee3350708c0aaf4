"""A video part's URL to a file the runtime can read, and nothing else on the machine.

`file://` URLs are served only from under `--media-dir`, checked after resolving `..` and links. A
`data:video/...;base64,` URL is written to a private temporary file (mode 0600 in a 0700 directory)
that is removed when its answer is done. http(s) URLs are refused unless the server allows them;
then they are downloaded, bounded by the same size limit as a request. Image parts (a video's frames)
follow the same rules and are read into memory: `read_images`, at most the request's size limit for
all of them together.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from panda_edge.serving.protocol import ApiError, bad_request

DOWNLOAD_TIMEOUT_S = 30.0


@dataclass
class MediaFile:
    """A video on disk for one request; `close` removes it when it is a temporary copy."""

    path: Path
    temporary: bool = False

    def close(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


class MediaResolver:
    def __init__(self, media_dir: Path | None, allow_remote: bool, max_bytes: int) -> None:
        self.media_dir = media_dir.resolve() if media_dir is not None else None
        self.allow_remote = allow_remote
        self.max_bytes = max_bytes
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="panda-serve-"))  # 0700

    def open(self, url: str) -> MediaFile:
        scheme = urlparse(url).scheme.lower()
        if scheme == "file":
            return MediaFile(self._local(url))
        if scheme == "data":
            return self._write(_data_url_bytes(url))
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise bad_request(
                    "remote video URLs are refused; send the video as a data: URL or a file:// URL under "
                    "the server's --media-dir (or start the server with --allow-remote-media)",
                    code="remote_media_refused",
                )
            return self._download(url)
        raise bad_request(
            f"unsupported video URL scheme '{scheme or url[:20]}': use file://, data: or https://",
            code="invalid_video_url",
        )

    def read_images(self, urls: Sequence[str]) -> list[bytes]:
        """The encoded bytes of each image URL (data:, file:// under --media-dir, http(s) when allowed),
        in order; their total is bounded by the request size limit."""
        images, total = [], 0
        for i, url in enumerate(urls):
            where = f"image {i + 1}"
            scheme = urlparse(url).scheme.lower()
            if scheme == "data":
                data = _data_url_bytes(url, image=True)
            elif scheme == "file":
                path = self._local(url, "image")
                if path.stat().st_size > self.max_bytes - total:
                    raise self._too_large("the images")
                data = path.read_bytes()
            elif scheme in ("http", "https"):
                if not self.allow_remote:
                    raise bad_request(
                        f"{where}: remote image URLs are refused; send the frames as data: URLs or "
                        "file:// URLs under the server's --media-dir (or start the server with "
                        "--allow-remote-media)",
                        code="remote_media_refused",
                    )
                media = self._download(url, "image")
                try:
                    data = media.path.read_bytes()
                finally:
                    media.close()
            else:
                raise bad_request(
                    f"{where}: unsupported image URL scheme '{scheme or url[:20]}': use data:, file:// "
                    "or https://",
                    code="invalid_image_url",
                )
            total += len(data)
            if scheme != "data" and total > self.max_bytes:
                raise self._too_large("the images")
            images.append(data)
        return images

    def close(self) -> None:
        for leftover in self.tmp_dir.glob("*"):
            leftover.unlink(missing_ok=True)
        self.tmp_dir.rmdir()

    def _local(self, url: str, what: str = "video") -> Path:
        if self.media_dir is None:
            raise ApiError(
                403,
                f"file:// {what} URLs need the server started with --media-dir DIR",
                "messages",
                "media_dir_not_set",
            )
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise bad_request(
                f"file:// URL with a host ('{parsed.netloc}'): use file:///path", code="invalid_video_url"
            )
        path = Path(unquote(parsed.path))
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise bad_request(f"{path}: no such {what} file", code=f"{what}_not_found") from None
        if not resolved.is_relative_to(self.media_dir):
            raise ApiError(
                403, f"{path} is outside the server's media directory", "messages", "media_path_refused"
            )
        if not resolved.is_file():
            raise bad_request(f"{path}: not a file", code=f"{what}_not_found")
        return resolved

    def _write(self, data: bytes) -> MediaFile:
        fd, name = tempfile.mkstemp(suffix=".video", dir=self.tmp_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return MediaFile(Path(name), temporary=True)

    def _too_large(self, what: str) -> ApiError:
        return ApiError(
            413, f"{what}: over {self.max_bytes >> 20} MB together", "messages", "video_too_large"
        )

    def _download(self, url: str, what: str = "video") -> MediaFile:
        import urllib.error
        import urllib.request

        fd, name = tempfile.mkstemp(suffix=".video", dir=self.tmp_dir)
        media = MediaFile(Path(name), temporary=True)
        try:
            with (
                os.fdopen(fd, "wb") as f,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            ):
                size = 0
                while chunk := response.read(1 << 20):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ApiError(
                            413,
                            f"{url}: the {what} is over {self.max_bytes >> 20} MB",
                            "messages",
                            "video_too_large",
                        )
                    f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            media.close()
            raise bad_request(
                f"{url}: could not download the {what} ({exc})", code=f"{what}_not_found"
            ) from None
        except BaseException:
            media.close()
            raise
        return media


def _data_url_bytes(url: str, image: bool = False) -> bytes:
    """A data: URL's bytes; its type must be a video's (or, with `image`, an image's: which image
    formats are read is the video layer's check)."""
    what = "image" if image else "video"
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise bad_request(
            f"a data: {what} URL must be data:{what}/<type>;base64,<data>", code=f"invalid_{what}_url"
        )
    mime = header[len("data:") : -len(";base64")].lower()
    if image and not (mime.startswith("image/") or mime == "application/octet-stream"):
        raise bad_request(f"a data: URL of type '{mime}' is not an image", code="invalid_image")
    if not image and not (mime.startswith("video/") or mime in ("application/octet-stream", "image/gif")):
        raise bad_request(f"a data: URL of type '{mime}' is not a video", code="invalid_video")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data: URL's base64 is damaged", code=f"invalid_{what}_url") from None
