"""Map: passes records through unchanged, but misbehaves on a record whose
value contains the configured `word` (default `boom`), as `mode` says:
`raise` (a ValueError), `loop` (forever) or `allocate` (without end). For
the tests of the sandbox's limits and of error handling with Python plugins."""

import weir

word = b"boom"
mode = "raise"


@weir.init
def configure(config):
    global word, mode
    word = config.get("word", "boom").encode()
    mode = config.get("mode", "raise")
    if mode not in ("raise", "loop", "allocate"):
        raise ValueError(f"mode {mode!r}: one of raise, loop, allocate")


@weir.map(name="misbehave-py")
def pass_through(record):
    if word in record.value:
        if mode == "loop":
            while True:
                pass
        if mode == "allocate":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        raise ValueError(f"found {word.decode()!r} in {record.value.decode()!r}")
    return record.value
