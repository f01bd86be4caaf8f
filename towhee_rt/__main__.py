"""``python -m towhee_rt serve REPO`` / ``python -m towhee_rt quickstart --images DIR``."""
import sys

from .cli import main

sys.exit(main(prog="python -m towhee_rt"))
