"""Assay's distributed work: workspace I/O, world, catalog, backbones, embedding, FAISS index, matching.

Ray reads ``RAY_AUTH_MODE`` when it is first imported, so it is fixed here, before any actors module can import
Ray: token authentication stays on unless the user set the variable (Ray's ports listen beyond loopback).
"""

import os as _os

_os.environ.setdefault("RAY_AUTH_MODE", "token")
