import sys

from igdeadlock.cli import main

sys.exit(main())
