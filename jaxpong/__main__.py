import sys

from jaxpong.cli.dispatch import main

sys.exit(main())
