"""vltk plugin: clip_gap."""
