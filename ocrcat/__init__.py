"""ocrcat: OCR vision-language training data as one catalog (a DuckLake lake queried with DuckDB),
SQL mixtures and a torch loader."""

__version__ = "0.1.0"
