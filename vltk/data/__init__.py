"""What the core knows about data: the dataset contracts, batching, and the Cityscapes label set.

Concrete datasets (the embedded ``synthetic`` scenes, ``urban`` folders, ``synthetic-det``, ``dwd``) are plugins in
``vltk_plugins.datasets``; the core only relies on :class:`~vltk.data.base.DenseDataSource` (segmentation) and
:class:`~vltk.data.detection.DetectionDataSource` (detection). Import the submodules you need: ``vltk.data.base``
and ``vltk.data.detection`` import torch, ``vltk.data.cityscapes`` does not.
"""
