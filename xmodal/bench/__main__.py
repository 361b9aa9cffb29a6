"""``python -m xmodal.bench``: see ``xmodal/bench/__init__.py``."""
import sys

from .cli import main

sys.exit(main())
