"""Reading, checking, splitting, tokenizing and batching tabular text data."""
