import sys

from fisherkl.cli import main

sys.exit(main())
