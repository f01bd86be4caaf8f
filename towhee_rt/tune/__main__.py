"""``python -m towhee_rt.tune REPO ...``: the same as ``towhee-rt tune REPO ...``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
