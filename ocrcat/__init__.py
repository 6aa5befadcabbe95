"""ocrcat: OCR vision-language training data as one DuckDB catalog, SQL mixtures and a torch loader."""

__version__ = "0.1.0"
