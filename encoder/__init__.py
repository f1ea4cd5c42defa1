"""SeFAR encoder: data layer, TimeSformer model, semi-supervised training, evaluation and export.

Importing this package does not import torch; the pure-Python dataset indexes in ``encoder.data``
(FineGym, FineDiving, UCF101/HMDB51 lists, splits) can be used without it.
"""
