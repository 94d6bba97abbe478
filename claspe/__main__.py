import sys

from claspe.cli import main

sys.exit(main())
