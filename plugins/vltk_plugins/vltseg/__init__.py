"""vltk plugin: vltseg."""
