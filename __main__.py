"""`python -m toolscript`: run the CLI, installed or vendored as a package, or from a checkout."""

import sys

if __package__:
    from .toolscript import main
else:
    from toolscript import main

sys.exit(main())
