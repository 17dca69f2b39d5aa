"""`ray job submit` entrypoint: `python jobs/rectify.py --config jobs/configs/<run>.yaml [--set key=value ...]`.

Same as `raystep rectify`; runs from a plain checkout too (the repo root is put on sys.path).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raystep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["rectify", *sys.argv[1:]]))
