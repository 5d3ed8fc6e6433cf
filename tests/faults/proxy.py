"""A fault-injecting TCP proxy on 127.0.0.1 (asyncio), run as its own process in front of the S3 server.

Faults apply to new connections in arrival order: reset (close with RST: SO_LINGER 0) or delay the
next N, and a black hole that accepts and never answers, for a window or until cleared; a black hole
also stalls connections already open (pooled keep-alive connections would otherwise dodge it) and
resets them when it lifts, since bytes were dropped. One request-aware fault: hold every request
whose bytes contain a pattern (e.g. "uploadId=": S3 multipart parts and completions), which stops a
writer deterministically in the middle of a multipart upload; on release a held request is reset,
or forwarded intact (to line up two writers' commits into a real race). Otherwise bytes pass through
unchanged.

The proxy is a separate process so that a test process whose GIL is held (delta-rs, Ray's driver)
cannot stall it. Control: one JSON object per line on a second loopback port; every reply carries
the counters. `Proxy` below is the test-side handle.

    python -m tests.faults.proxy --upstream 127.0.0.1:PORT   # prints {"port": P, "control": C}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

CHUNK = 64 * 1024


@dataclass
class Counters:
    seen: int = 0  # connections accepted
    passed: int = 0  # connected upstream (delayed ones included)
    reset: int = 0  # closed with RST by a reset fault (at accept or after some bytes)
    delayed: int = 0
    blackholed: int = 0  # connections held by a black hole (new or already open)
    open: int = 0

    @property
    def faulted(self) -> int:
        return self.reset + self.delayed + self.blackholed


@dataclass
class Faults:
    reset_next: int = 0
    reset_after_bytes: int = 0  # a reset connection first forwards this many request bytes
    delay_next: int = 0
    delay_s: float = 0.0
    blackhole_until: float = 0.0  # time.monotonic(); math.inf until cleared
    hold_matching: bytes = b""  # hold any request whose bytes contain this (until cleared) ...
    hold_after: int = 0  # ... once this many matching requests have passed; on clear() a held
    hold_forward: bool = False  # request is forwarded (late, but intact) instead of reset
    lifted: asyncio.Event = field(default_factory=asyncio.Event)

    def blackholed(self) -> bool:
        return time.monotonic() < self.blackhole_until


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset by peer'."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client, self.upstream = client, None
        self.held = False  # a black hole dropped bytes of this connection: it cannot resume

    def abort(self) -> None:
        _rst(self.client)
        _rst(self.upstream)


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.faults = Faults()
        self.counters = Counters()
        self.conns: set[_Conn] = set()
        self._lift_timer: asyncio.TimerHandle | None = None

    # ---- control ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        f = self.faults
        remaining = f.blackhole_until - time.monotonic() if f.blackholed() else 0.0
        return {
            **asdict(self.counters),
            "faulted": self.counters.faulted,
            "reset_pending": f.reset_next,
            "delay_pending": f.delay_next,
            "hold_passes_left": f.hold_after,
            "blackhole_s": None if remaining == math.inf else round(remaining, 3),
        }

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, f = cmd.get("op"), self.faults
        if op == "reset":
            f.reset_next, f.reset_after_bytes = int(cmd["n"]), int(cmd.get("after_bytes", 0))
        elif op == "delay":
            f.delay_next, f.delay_s = int(cmd["n"]), float(cmd["seconds"])
        elif op == "blackhole":
            seconds = cmd.get("seconds")
            self._blackhole(math.inf if seconds is None else float(seconds))
        elif op == "hold_matching":
            f.hold_matching, f.hold_after = str(cmd["pattern"]).encode(), int(cmd.get("after", 0))
            f.hold_forward = bool(cmd.get("forward", False))
            if f.lifted.is_set():
                f.lifted = asyncio.Event()
        elif op == "reset_open":
            for conn in list(self.conns):
                conn.abort()
        elif op == "clear":
            f.reset_next = f.delay_next = 0
            f.hold_matching = b""
            self._lift()
        elif op == "zero":
            self.counters = Counters(open=self.counters.open)
        elif op != "stats":
            return {"error": f"unknown op {op!r}"}
        return self.state()

    def _blackhole(self, seconds: float) -> None:
        self.faults.blackhole_until = time.monotonic() + seconds
        self.faults.lifted = asyncio.Event()
        if self._lift_timer is not None:
            self._lift_timer.cancel()
        if seconds != math.inf:
            self._lift_timer = asyncio.get_running_loop().call_later(seconds, self._lift)

    def _lift(self) -> None:
        self.faults.blackhole_until = 0.0
        self.faults.lifted.set()
        for conn in [c for c in self.conns if c.held]:
            conn.abort()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                try:
                    reply = self.command(json.loads(line))
                except (ValueError, KeyError) as e:
                    reply = {"error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        writer.close()

    # ---- data path ----------------------------------------------------------------------------

    async def _hold(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Swallow what the peer sends until the black hole lifts (then _lift resets the connection)."""
        if not conn.held:
            self.counters.blackholed += 1
        conn.held = True
        lifted = asyncio.ensure_future(self.faults.lifted.wait())
        try:
            while not lifted.done():
                read = asyncio.ensure_future(reader.read(CHUNK))
                done, _ = await asyncio.wait({read, lifted}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                elif not read.result():
                    break
        finally:
            lifted.cancel()
        conn.abort()

    def _held_request(self, data: bytes) -> bool:
        f = self.faults
        if not f.hold_matching or f.hold_matching not in data:
            return False
        if f.hold_after > 0:
            f.hold_after -= 1
            return False
        return True

    async def _pipe(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        reset_after: int | None,
        request: bool,
    ) -> None:
        sent = 0
        try:
            while data := await src.read(CHUNK):
                held = request and self._held_request(data)
                if held and self.faults.hold_forward:
                    self.counters.blackholed += 1
                    await self.faults.lifted.wait()  # then forward it: a late request, not a lost one
                elif held or self.faults.blackholed():
                    await self._hold(conn, src)
                    return
                if reset_after is not None and sent + len(data) >= reset_after:
                    dst.write(data[: max(reset_after - sent, 0)])
                    with contextlib.suppress(ConnectionError):
                        await dst.drain()
                    self.counters.reset += 1
                    conn.abort()
                    return
                sent += len(data)
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (ConnectionError, OSError):
            conn.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self.conns.add(conn)
        self.counters.seen += 1
        self.counters.open += 1
        f = self.faults
        try:
            reset_after = None
            if f.reset_next > 0:
                f.reset_next -= 1
                if f.reset_after_bytes <= 0:
                    self.counters.reset += 1
                    _rst(writer)
                    return
                reset_after = f.reset_after_bytes
            if f.blackholed():
                await self._hold(conn, reader)
                return
            if f.delay_next > 0:
                f.delay_next -= 1
                self.counters.delayed += 1
                await asyncio.sleep(f.delay_s)
            try:
                up_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                _rst(writer)
                return
            self.counters.passed += 1
            await asyncio.gather(
                self._pipe(conn, reader, conn.upstream, reset_after, request=True),
                self._pipe(conn, up_reader, writer, None, request=False),
            )
        finally:
            self.conns.discard(conn)
            self.counters.open -= 1
            if not writer.transport.is_closing():
                writer.close()
            if conn.upstream is not None and not conn.upstream.transport.is_closing():
                conn.upstream.close()


async def _serve(upstream: tuple[str, int], port: int) -> None:
    proxy = FaultProxy(upstream)
    data = await asyncio.start_server(proxy.handle, "127.0.0.1", port, backlog=512)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", 0)
    ports = {"port": data.sockets[0].getsockname()[1], "control": control.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    async with data, control:
        await asyncio.gather(data.serve_forever(), control.serve_forever())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    p.add_argument("--port", type=int, default=0, help="listening port on 127.0.0.1 (default: any free)")
    args = p.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((host, int(port)), args.port))


class Proxy:
    """Test-side handle: starts the proxy process and sends it commands over its control port."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.proc: subprocess.Popen | None = None
        self.port = self.control_port = 0
        self._ctl: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.proxy", "--upstream", self.upstream],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fault proxy exited with {self.proc.wait()} before listening")
        ports = json.loads(line)
        self.port, self.control_port = ports["port"], ports["control"]
        self._ctl = socket.create_connection(("127.0.0.1", self.control_port), timeout=10)
        return self

    def stop(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _send(self, **cmd: Any) -> dict[str, Any]:
        assert self._ctl is not None, "proxy not started"
        self._ctl.sendall(json.dumps(cmd).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self._ctl.recv(4096)
            if not chunk:
                raise RuntimeError("fault proxy closed its control connection")
            buf += chunk
        reply = json.loads(buf)
        if "error" in reply:
            raise ValueError(reply["error"])
        return reply

    def reset(self, n: int, after_bytes: int = 0) -> dict[str, Any]:
        """RST the next n connections, at accept or after forwarding `after_bytes` request bytes."""
        return self._send(op="reset", n=n, after_bytes=after_bytes)

    def delay(self, n: int, seconds: float) -> dict[str, Any]:
        """Hold the next n connections `seconds` before connecting them upstream."""
        return self._send(op="delay", n=n, seconds=seconds)

    def blackhole(self, seconds: float | None = None) -> dict[str, Any]:
        """Accept and never answer, for `seconds` or until clear(); open connections stall too."""
        return self._send(op="blackhole", seconds=seconds)

    def hold_matching(self, pattern: str, after: int = 0, forward: bool = False) -> dict[str, Any]:
        """Hold requests containing `pattern`, after letting the first `after` of them through, until
        clear(), which resets the held connections or, with `forward`, sends the requests on."""
        return self._send(op="hold_matching", pattern=pattern, after=after, forward=forward)

    def reset_open(self) -> dict[str, Any]:
        """RST every connection open now (drops pooled keep-alive connections)."""
        return self._send(op="reset_open")

    def clear(self) -> dict[str, Any]:
        """Back to pass-through: pending faults dropped, a black hole lifted."""
        return self._send(op="clear")

    def zero(self) -> dict[str, Any]:
        return self._send(op="zero")

    def stats(self) -> dict[str, Any]:
        return self._send(op="stats")


if __name__ == "__main__":
    main()
