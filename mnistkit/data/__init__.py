"""Data: find and load datasets (``sources``, ``vision``, ``audio``), the shared containers (``types``),
and preparing them for the loop (``batches``)."""
