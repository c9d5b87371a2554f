# A TCP proxy on loopback that delays every response chunk by DELAY ms:
# python3 delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
import asyncio, sys
DELAY = float(sys.argv[3]) / 1000
async def pipe(r, w, delay):
    try:
        while True:
            data = await r.read(65536)
            if not data: break
            if delay: await asyncio.sleep(delay)
            w.write(data); await w.drain()
    except Exception: pass
    finally:
        try: w.close()
        except Exception: pass
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', int(sys.argv[2]))
    await asyncio.gather(pipe(cr, sw, 0), pipe(sr, cw, DELAY))
async def main():
    s = await asyncio.start_server(handle, '127.0.0.1', int(sys.argv[1]))
    async with s: await s.serve_forever()
asyncio.run(main())
