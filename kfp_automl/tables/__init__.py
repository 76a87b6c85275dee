"""Reading and writing user tables (CSV, TSV, Parquet, JSON Lines; paths or fsspec URLs); the built-in table."""
