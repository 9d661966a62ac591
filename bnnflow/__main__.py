import sys

from bnnflow.cli import main

sys.exit(main())
