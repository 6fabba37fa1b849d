"""`python -m trainer.dashboard --data ./data --port 8080`: see trainer/dashboard/server.py."""

import sys

from trainer.dashboard.server import main

sys.exit(main())
