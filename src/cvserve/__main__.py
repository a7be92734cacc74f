import sys

from cvserve.cli import main

sys.exit(main())
