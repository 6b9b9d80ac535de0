"""Multi-task sentence classification on a frozen sentence-transformer.

Kept import-light on purpose: `mtl predict` must start fast, so heavy libraries
(torch, sentence-transformers, pandas, matplotlib) are imported inside the
functions that need them.
"""

__version__ = "0.1.0"
