"""``python -m xmodal``: the ``xmodal`` command (``xmodal/cli.py``)."""
import sys

from .cli import main

sys.exit(main())
