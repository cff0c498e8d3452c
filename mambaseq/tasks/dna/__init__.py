"""DNA tasks (tokenizer, FASTA access, datasets, recipes) arrive with the DNA issue."""
