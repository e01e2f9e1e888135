"""Parameter tables: a pandas DataFrame when pandas is installed, otherwise a small column table."""

from __future__ import annotations

import numpy as np


class ParameterTable:
    """Named rows, NumPy columns and ``attrs`` (model-level facts), for when pandas is not installed.

    ``table["std_err"]`` is a column, ``table.index`` the row names, ``table.loc(name)`` a row as a dict;
    ``print(table)`` shows it."""

    def __init__(self, columns: dict, index: list, attrs: dict):
        self.columns = list(columns)
        self._data = {k: np.asarray(v) for k, v in columns.items()}
        self.index = list(index)
        self.attrs = dict(attrs)

    def __getitem__(self, column: str) -> np.ndarray:
        return self._data[column]

    def __len__(self) -> int:
        return len(self.index)

    def loc(self, name: str) -> dict:
        i = self.index.index(name)
        return {k: self._data[k][i] for k in self.columns}

    def to_string(self) -> str:
        w = max([len(str(n)) for n in self.index] + [9])
        lines = [f"{'parameter':{w}s} " + " ".join(f"{c:>12s}" for c in self.columns)]
        for i, n in enumerate(self.index):
            lines.append(f"{str(n):{w}s} " + " ".join(f"{self._data[c][i]:12.5g}" for c in self.columns))
        return "\n".join(lines)

    __str__ = __repr__ = to_string


def make_table(columns: dict, index: list, attrs: dict, index_name: str = "parameter"):
    """A ``pandas.DataFrame`` (index named ``index_name``, ``attrs`` set) or, without pandas, a
    :class:`ParameterTable` with the same columns, row names and attrs."""
    try:
        import pandas as pd
    except ImportError:
        return ParameterTable(columns, index, attrs)
    df = pd.DataFrame(columns, index=pd.Index(list(index), name=index_name))
    df.attrs.update(attrs)
    return df
