"""python -m demo: the demo (scripts/demo.sh runs it after scripts/setup.sh)."""

import sys

from demo.run import main

sys.exit(main())
