"""Update-state: a running sum per key across micro-batches (Spark's
`updateStateByKey` classic); the Python twin of `plugins/running-total`.

For every key with new values in a batch, the values (decimal integers) are
added to the key's total so far, and one record is emitted: the key and the
new total, with the latest timestamp of the key's new values. The state is
the total (JSON). A key that timed out is forgotten."""

import weir


@weir.update_state(name="running-total-py")
def running_total(key, values, state, out):
    if not values:
        return None
    total = (state or 0) + sum(int(value) for value in values)
    out.emit_keyed(key, str(total))
    return total
