"""`python -m decoding ...`: see decoding/cli.py."""
from .cli import main

raise SystemExit(main())
