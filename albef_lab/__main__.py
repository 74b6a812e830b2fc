import sys

from albef_lab.cli import main

sys.exit(main())
