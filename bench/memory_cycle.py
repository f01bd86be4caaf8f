"""Does a request with a bad item keep its good items' decoded images alive? In-process, no
server: the decode operator through ``backends.batching.process_items`` the way the served
adapter calls it, the cyclic collector off, a weak reference to a decoded image.

    python -m bench.memory_cycle

Prints, for a request of one good image and for one of a good and a bad image, whether the
decoded image is still alive once the caller returned, and after ``gc.collect()``. Alive, then
freed by the collector: a reference cycle (bench/results/memory.md).
"""
from __future__ import annotations

import gc
import weakref

from .common import IMAGES_DIR


def _alive_after_call(op, items):
    from towhee_rt.backends.batching import process_items

    def execute():
        results = process_items(op, items)
        good = [r for r in results if not isinstance(r, BaseException)]
        return weakref.ref(good[0][0])

    ref = execute()
    return ref() is not None, ref


def main() -> None:
    from towhee_rt.backends.image_decode import CV2RGBDecode

    op = CV2RGBDecode()
    op.ensure_setup("cpu")
    big = (IMAGES_DIR / "coffee_1920x1280.jpg").read_bytes()
    bad = (IMAGES_DIR.parent / "bad" / "truncated.jpg").read_bytes()
    gc.disable()
    try:
        for name, items in (("good", [(big,)]), ("good + bad", [(big,), (bad,)])):
            alive, ref = _alive_after_call(op, items)
            gc.collect()
            print(f"request of {name}: decoded image alive after the call: {alive}; "
                  f"after gc.collect(): {ref() is not None}")
    finally:
        gc.enable()


if __name__ == "__main__":
    main()
