"""Data: readers for tabular files, row-by-row validation, splits, tokenization and collation."""
from .collate import EncodedSplit, collate, encode_texts
from .dataset import LabelSpace, TextExample, read_examples_from_file
from .splits import load_examples

__all__ = ["LabelSpace", "TextExample", "load_examples", "read_examples_from_file", "EncodedSplit", "encode_texts",
           "collate"]
