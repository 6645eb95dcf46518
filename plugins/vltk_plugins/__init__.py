"""Built-in vltk plugins, each an entry point of the ``vltk-dg`` distribution, loaded like any third-party plugin.

Components by kind (``backbones/``, ``adapters/``, ``prompters/``, ``decoders/``, ``datasets/``: reusable parts,
one package per component with its light ``options.py`` beside its model), papers by name (``rein/``,
``denseclip/``, ``lseg/``, ``vltseg/``, ``clip_gap/``: what one paper adds), shared building blocks in ``common/``,
and ``kernels/`` (the ``vltk bench`` command). Every module imports the core through :mod:`vltk.api` only.
"""
