"""The built-in ``synthetic`` dataset: procedural street scenes in six appearance domains, nothing to download.

Why it exists: tests, tutorials and CI need a domain-generalisation benchmark that runs anywhere in seconds.
Every scene is a pinhole-camera view of a street (ground plane with road, sidewalks and terrain; facades and
vegetation on planes parallel to the road; billboards for cars, people, poles, signs and lights), so there is a
horizon, a vanishing point, objects shrink with distance and nearer things occlude farther ones (a z-buffer).

The *layout* (label map, depth, instance ids, texture coordinates) depends only on ``(seed, index)`` through
``numpy.random.default_rng([seed, index])``; the *appearance* depends on the domain as well. So the same scene
in ``synthetic`` (flat GTAV-like colours), ``textured``, ``fog``, ``night``, ``rain`` and ``snow`` has exactly
the same labels, and a model trained on the source domain meets a real appearance shift on the others.
Everything is vectorised numpy: a 256x256 sample renders in about 7-13 ms (128x128: about 5-6 ms) on one core
(``benchmarks/render_time.py`` measures it).

The modules, in the order a render runs through them:

- :mod:`.options` — the dataset's options and the domain names (no torch: ``vltk list`` and validation read it).
- :mod:`.codes` — class ids, surface details and orientations: the alphabet of a layout's per-pixel code.
- :mod:`.canvas` — the z-buffered pinhole camera everything is drawn through, in world metres.
- :mod:`.objects` — vehicles, people, street furniture and trees, and where they stand.
- :mod:`.layout` — :func:`~.layout.scene_layout`: the street geometry and labels of ``(seed, index)``.
- :mod:`.painting` — colour, noise-texture, light, sky, bloom and sensor primitives.
- :mod:`.domains` — the six painters, the :data:`~.domains.DOMAIN_PAINTERS` registry, :func:`~.domains.paint_domain`.
- :mod:`.render` — :func:`~.render.render_scene` and :func:`~.render.render_domains` (numpy only).
- :mod:`.dataset` — the torch data source ``synthetic`` (:class:`~.dataset.SyntheticScenes`) and its factory.

This ``__init__`` imports nothing, so importing :mod:`.options` stays free of numpy-heavy and torch imports.
"""
