"""The ``ade20k`` dataset: ADEChallengeData2016 (150 classes) from a local folder."""
