"""ICHOR's built-in downstream task heads.

They are plugins like any third-party head: found through the ``ichor.heads`` entry-point
group declared in pyproject.toml, never by importing this package for its side effects.
"""
