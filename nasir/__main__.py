import sys

from nasir.cli import main

sys.exit(main())
