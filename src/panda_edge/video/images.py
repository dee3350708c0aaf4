"""A video given as encoded images (a harness's PNG/JPEG/WebP frames) to the RGB uint8 frames the model
sees.

Every image is opened and checked before any is kept: its format (PNG, JPEG or WebP), its size (at
most `MAX_IMAGE_PIXELS`, and one size for all), and that it decodes whole. Only the frames the one
rule of `video.frames` picks are kept as arrays, so 128 frames cost the memory of the model's 8 plus
the one being decoded. Every problem is a `VideoError` naming the frame (1-based, in the order sent).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from panda_edge.errors import VideoError
from panda_edge.video.frames import MAX_FRAMES, check_count, check_size, sampled_indices

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# The largest frame accepted (4096 x 4096): far above any size the model takes (448 px), and a
# bound on what one small compressed image may expand to in memory (48 MB as RGB).
MAX_IMAGE_PIXELS = 4096 * 4096


def read_frames(images: Sequence[bytes], video_frames: int, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """The frames the model sees of the video whose frames are `images` (encoded, in order): sampled to
    at most `video_frames` by the one rule (`video.frames`), each (H, W, 3) uint8 RGB."""
    from PIL import Image

    check_count(len(images), max_frames)
    keep = set(sampled_indices(len(images), video_frames))
    frames: list[np.ndarray] = []
    first: tuple[int, int] | None = None
    for i, data in enumerate(images):
        with _opened(data, i) as image:
            first = first or image.size
            check_size(i, image.size, first)
            try:
                image.load()
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8) if i in keep else None
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise VideoError(f"frame {i + 1}: the {image.format} image is damaged ({exc})") from None
        if rgb is not None:
            frames.append(rgb)
    return frames


@contextmanager
def _opened(data: bytes, index: int) -> Iterator[Any]:
    """`Image.open` of one frame's bytes with the checks that need no decoding: its format and size."""
    from PIL import Image, UnidentifiedImageError

    n = index + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise VideoError(f"frame {n}: the image is too large to decode") from None
        except UnidentifiedImageError:
            raise VideoError(
                f"frame {n}: not an image of a supported format ({', '.join(IMAGE_FORMATS)})"
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise VideoError(f"frame {n}: the image is damaged ({exc})") from None
    with image:
        if image.format not in IMAGE_FORMATS:
            raise VideoError(f"frame {n}: {image.format} images are not supported; send PNG, JPEG or WebP")
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise VideoError(
                f"frame {n} is {width}x{height}: at most 4096x4096 pixels a frame; send smaller frames"
            )
        yield image
