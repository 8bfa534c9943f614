import sys

from jaxpong.cli import main

sys.exit(main())
