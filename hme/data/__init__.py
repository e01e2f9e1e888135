"""Data sets bundled with hme (see README.md in this folder for sources and licences)."""
