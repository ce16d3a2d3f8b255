import sys

from vitprune.cli import main

sys.exit(main())
