"""The recipe layer: YAML with positions -> a validated, pure-data ``Recipe`` (no torch here).

* ``yamlio`` -- safe YAML loading that remembers file:line:column; ``--set`` overrides.
* ``schema`` -- the recipe sections, their fields, defaults and docstrings; the generated model;
  the cross-field rules; error messages.
* ``reference`` -- ``mnistkit fields`` and ``docs/recipe.md``, generated from ``schema``.
"""
