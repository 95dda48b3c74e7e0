import sys

from remediations.cli import main

sys.exit(main())
