"""vltk plugin: lseg."""
