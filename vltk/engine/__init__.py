"""Training and evaluation loops in plain PyTorch (imports torch; not imported by ``import vltk``)."""
