"""python -m nanochat_gateway"""

import sys

from nanochat_gateway.cli import main

sys.exit(main())
