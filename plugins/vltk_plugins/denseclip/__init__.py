"""vltk plugin: denseclip."""
