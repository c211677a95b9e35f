"""The table file formats tuneforge reads, by file suffix (a module of its own so that both the readers and the
data-source resolution can ask it without importing each other)."""

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
