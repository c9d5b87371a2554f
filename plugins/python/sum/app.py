"""Reducer: sums the values of each key, read as decimal integers, and
writes the total as decimal text; the Python twin of `plugins/sum` for
integers (totals are valid inputs, so partial sums merge)."""

import weir


@weir.reduce(name="sum-py")
def total(values):
    return str(sum(int(value) for value in values))
