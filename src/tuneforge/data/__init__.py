"""Data: readers for tabular files, row-by-row validation, splits, tokenization and collation."""
from .dataset import LabelSpace, TextExample, load_examples, read_examples_from_file
from .collate import EncodedSplit, encode, collate

__all__ = ["LabelSpace", "TextExample", "load_examples", "read_examples_from_file", "EncodedSplit", "encode", "collate"]
