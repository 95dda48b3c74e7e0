import sys

from exporter.cli import main

if __name__ == "__main__":  # not when a spawned helper process imports the main module
    sys.exit(main())
