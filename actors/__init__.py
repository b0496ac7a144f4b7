"""Assay's distributed work, one subpackage per capability (see docs/architecture.md):

* ``core``: workspace I/O, sharded datasets, Ray runtime, image decoding, user errors
* ``catalog``: image and label tables, ingest, the embedded world
* ``features``: backbones, region encoder, feature store, embedding on Ray
* ``selection``: FAISS index, template matching, mining
* ``detection``, ``active``, ``compression``: detectors, active-learning rounds, compressed models

Importing ``actors`` does nothing else: no environment changes, no Ray or torch import.
"""
