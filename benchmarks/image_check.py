"""What the API's image check costs per image: the old full decode against the header and
integrity checks it does now (full decoding is the worker's preprocessing).

    python -m benchmarks.image_check            # prints a table; nothing is written

Images: a 6300 x 6300 single-colour PNG (39.7 MP, about 120 KB in RGB, 5 KB in 1 bit: the
cheapest files that fill the per-image pixel limit; a request may carry 8), a 4000 x 3000
noisy photo as JPEG (a phone picture) and as PNG.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

from PIL import Image

from internvl_queue.core.images import inspect_image
from tests.images import photo, png_bomb

MAX_PIXELS = 40_000_000


def single_colour_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def full_decode(data: bytes) -> None:
    """The check as it was: open, then decode every pixel."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def new_check(data: bytes) -> None:
    inspect_image(data, max_pixels=MAX_PIXELS)


def median_ms(check: Callable[[bytes], None], data: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        check(data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    images = {
        "PNG 6300x6300 RGB one colour": single_colour_png(6300, 6300),
        "PNG 6300x6300 1-bit": png_bomb(6300, 6300),
        "JPEG 4000x3000 photo": photo(4000, 3000, seed=1),
        "PNG 4000x3000 photo": photo(4000, 3000, seed=1, fmt="PNG"),
    }
    print(
        f"{'image':<30} {'bytes':>10} {'full decode ms':>15} {'new check ms':>13} {'speed-up':>9}"
    )
    for name, data in images.items():
        before = median_ms(full_decode, data, repeats=3)
        after = median_ms(new_check, data, repeats=5)
        print(f"{name:<30} {len(data):>10} {before:>15.1f} {after:>13.1f} {before / after:>8.0f}x")


if __name__ == "__main__":
    main()
