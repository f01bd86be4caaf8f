"""``python -m towhee_rt.deploy kubernetes REPO ...``: the same as ``towhee-rt deploy kubernetes
REPO ...``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
