"""Built-in vltk plugins: one sub-package per paper plus `generic` for paper-agnostic components."""
