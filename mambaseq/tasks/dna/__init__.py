"""DNA tasks: tokenizer, FASTA/BED access, pretraining, classification, embedding, scoring, generation."""

from .fasta import DnaInputError, FastaCollection, FastaFile, Interval, Record, read_bed
from .tokenizer import DnaTokenizer, decode, encode, reverse_complement, soft_mask_positions

__all__ = [
    "DnaInputError",
    "DnaTokenizer",
    "FastaCollection",
    "FastaFile",
    "Interval",
    "Record",
    "decode",
    "encode",
    "read_bed",
    "reverse_complement",
    "soft_mask_positions",
]
