"""`python -m jaxpong.stepcost`, as docs/seed_speed.md spells it: one policy step's cost, jaxpong/bench/stepcost.py."""

from jaxpong.bench.stepcost import main

if __name__ == "__main__":
    raise SystemExit(main())
