"""``synthetic-det``: instance boxes of the synthetic street scenes (options beside the dataset)."""
