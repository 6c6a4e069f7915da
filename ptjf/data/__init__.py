"""SeqIO glue: splits, in-memory sources, vocabularies and text preprocessors."""
