# A TCP proxy on loopback that delays each response by DELAY ms (its first
# chunk after the client last sent: one round trip per request, while the
# rest of a large response streams at loopback speed):
# python3 delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
import asyncio, sys
DELAY = float(sys.argv[3]) / 1000
async def pipe(r, w, state, upstream):
    try:
        while True:
            data = await r.read(65536)
            if not data: break
            if upstream:
                state["asked"] = True
            elif state["asked"]:
                state["asked"] = False
                if DELAY: await asyncio.sleep(DELAY)
            w.write(data); await w.drain()
    except Exception: pass
    finally:
        try: w.close()
        except Exception: pass
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', int(sys.argv[2]))
    state = {"asked": False}
    await asyncio.gather(pipe(cr, sw, state, True), pipe(sr, cw, state, False))
async def main():
    s = await asyncio.start_server(handle, '127.0.0.1', int(sys.argv[1]))
    async with s: await s.serve_forever()
asyncio.run(main())
