"""The ``clip-contrastive`` image-text pretraining head (``task: pretrain``)."""
