"""The late-sender report: per-rank pictures, a Perfetto trace, a table and a plain-language finding, read
from a run's ranks.jsonl."""
