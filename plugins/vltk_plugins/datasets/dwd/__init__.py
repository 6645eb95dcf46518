"""``dwd``: the Diverse Weather Dataset read from a local VOC-style folder (options beside the reader)."""
