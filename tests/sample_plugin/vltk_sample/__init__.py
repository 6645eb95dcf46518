"""vltk-sample: a minimal third-party vltk plugin, the worked example of ``docs/architecture.md``.

It adds a ``linear`` decoder (``vltk_sample/linear/``), a ``bitfit`` adapter (``vltk_sample/bitfit/``), the
``sample/linear`` recipe and a ``vltk hello`` command, all through one entry-point module, ``vltk_sample/hooks.py``.
"""
