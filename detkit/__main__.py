"""``python -m detkit``."""
import sys

from detkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
