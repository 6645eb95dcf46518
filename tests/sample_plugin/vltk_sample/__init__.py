"""vltk-sample: a minimal third-party vltk plugin (BitFit adapter + a 'hello' command)."""
