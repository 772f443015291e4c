"""Items someone brings to the explorer: a title and an uploaded reference image, checked and kept in memory.

An upload is decoded with PIL and cropped to the generator's square cover size exactly as ``reference_batch``
would crop it (``ImageOps.fit``, bicubic), so only a small image is kept and the covers are the ones a notebook
would draw from the original file. A file PIL cannot read is refused with one line; nothing is saved. So is one of
more than ``MAX_UPLOAD_PIXELS`` (4096 x 4096 = 16.8 M) pixels: its size is read from the header before any pixel
is decoded, since a small file (a 9400 x 9400 PNG of one colour is a few hundred KiB) can decode to gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict

from PIL import Image, ImageOps

from icg.explore.explorer import ExploreInputError, Item

UPLOAD_PREFIX = "upload:"
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 4096 * 4096  # ~50 MB decoded as RGB; a cover is drawn at a few hundred pixels a side
MAX_TITLE_CHARS = 300


class Uploads:
    """The uploaded items, the most recent ``capacity`` of them, by key (``upload:<hash of title and bytes>``).

    Args:
        image_size: the generator's cover side; uploads are kept at that size.
        capacity: how many uploads are kept (the oldest is forgotten first).
    """

    def __init__(self, image_size: int, capacity: int = 64) -> None:
        self.image_size, self.capacity = int(image_size), capacity
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, title: str, data: bytes, filename: str = "the upload") -> Item:
        """Check and keep an uploaded item; ExploreInputError (one line) when the title or the file is unusable."""
        title = " ".join(str(title).split())
        if not title:
            raise ExploreInputError("an uploaded item needs a title: type the title the covers are for")
        if len(title) > MAX_TITLE_CHARS:
            raise ExploreInputError(f"the title has {len(title)} characters; keep it under {MAX_TITLE_CHARS}")
        if not data:
            raise ExploreInputError(f"{filename}: empty file; choose the item's reference image (PNG, JPEG, WebP)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise ExploreInputError(f"{filename}: {len(data) / 2**20:.1f} MiB; upload an image under 20 MiB")
        image = decode_image(data, filename)
        key = UPLOAD_PREFIX + hashlib.sha256(title.encode() + b"\0" + data).hexdigest()[:16]
        side = (self.image_size, self.image_size)
        item = Item(key, title, ImageOps.fit(image, side, Image.Resampling.BICUBIC))
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item

    def get(self, key: str) -> Item | None:
        with self._lock:
            return self._items.get(key)


def decode_image(data: bytes, filename: str) -> Image.Image:
    """The RGB image in ``data``; ExploreInputError naming the file when PIL cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, rather than decode, a bomb
            with Image.open(io.BytesIO(data)) as opened:  # lazy: only the header is read here
                width, height = opened.size
                if width * height <= MAX_UPLOAD_PIXELS:
                    opened.load()
                    return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExploreInputError(
            f"{filename}: not an image PIL can read ({reason}); upload a PNG, JPEG or WebP file"
        ) from None
    raise ExploreInputError(
        f"{filename}: {width} x {height} pixels; upload an image of at most {MAX_UPLOAD_PIXELS:,} pixels "
        "(e.g. 4096 x 4096)"
    )
