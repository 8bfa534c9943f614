"""`python -m jaxpong.batchstudy`, as the README and docs spell it: the batch study, jaxpong/scale/batchstudy.py."""

import sys

from jaxpong.scale.batchstudy import main

if __name__ == "__main__":
    sys.exit(main())
