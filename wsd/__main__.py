import sys

from wsd.cli import main

sys.exit(main())
