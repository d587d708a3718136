"""Shared asyncio pieces for the reliability load scripts (stdlib only).

SOCKS5 client steps and the destination servers they talk to. Every wait has a
bound: a script never hangs on a proxy that misbehaves, it reports it.
"""
import asyncio
import hashlib
import os
import socket
import struct

VER = 5


class Fail(Exception):
    pass


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


async def open_conn(proxy, source=None, timeout=10):
    host, port = split_hostport(proxy)
    kw = {"local_addr": (source, 0)} if source else {}
    return await asyncio.wait_for(asyncio.open_connection(host, port, **kw), timeout)


async def read_exact(reader, n, timeout=10):
    try:
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except asyncio.IncompleteReadError as e:
        raise Fail("EOF after %d of %d bytes" % (len(e.partial), n))


async def greet(reader, writer, user=None, password=None, timeout=10):
    """Method negotiation (+ RFC 1929). Returns None on success, else why not."""
    method = 2 if user is not None else 0
    writer.write(bytes([VER, 1, method]))
    ver, chosen = await read_exact(reader, 2, timeout)
    if ver != VER or chosen != method:
        return "method 0x%02x" % chosen
    if method == 2:
        u, p = user.encode(), password.encode()
        writer.write(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        _, status = await read_exact(reader, 2, timeout)
        if status != 0:
            return "auth status 0x%02x" % status
    return None


async def connect_req(reader, writer, host, port, timeout=10):
    """CONNECT to an IPv4 host; returns the reply code."""
    writer.write(bytes([VER, 1, 0, 1]) + socket.inet_aton(host) + struct.pack("!H", port))
    head = await read_exact(reader, 4, timeout)
    if head[0] != VER:
        raise Fail("reply version %d" % head[0])
    await read_exact(reader, {1: 6, 4: 18}.get(head[3], 6), timeout)
    return head[1]


async def socks_open(proxy, target_port, user=None, password=None, source=None, timeout=10):
    """A tunnel to 127.0.0.1:target_port through the proxy, or raises Fail."""
    reader, writer = await open_conn(proxy, source, timeout)
    try:
        why = await greet(reader, writer, user, password, timeout)
        if why:
            raise Fail(why)
        rep = await connect_req(reader, writer, "127.0.0.1", target_port, timeout)
        if rep != 0:
            raise Fail("CONNECT reply 0x%02x" % rep)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def at_eof(reader, timeout):
    """True when the peer closed (EOF or reset) within `timeout`, False otherwise."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        while data:
            data = await asyncio.wait_for(reader.read(65536), timeout)
        return True
    except (ConnectionError, OSError):
        return True
    except asyncio.TimeoutError:
        return False


class Servers:
    """Destination servers on 127.0.0.1, in this process's event loop.

    echo:      echoes; on client EOF shuts down its write side. If the stream
               starts with b"ID" + 8 bytes, records sha256 of everything it
               received (the ID included) under that id in `received`.
    source:    writes pseudo-random bytes until the client goes away.
    halfclose: sends b"banner\\n", shuts its write side, reads to EOF and
               counts a session in `late_ok` when it got b"bye" after that.
    """

    def __init__(self):
        self.received = {}
        self.late_ok = 0

    async def start(self):
        self._servers = [
            await asyncio.start_server(self._echo, "127.0.0.1", 0),
            await asyncio.start_server(self._source, "127.0.0.1", 0),
            await asyncio.start_server(self._halfclose, "127.0.0.1", 0),
        ]
        self.echo, self.source, self.halfclose = (
            s.sockets[0].getsockname()[1] for s in self._servers)
        return self

    async def _echo(self, reader, writer):
        h = hashlib.sha256()
        first = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if len(first) < 10:
                    first += data[:10 - len(first)]
                h.update(data)
                writer.write(data)
                await writer.drain()
            if first.startswith(b"ID") and len(first) == 10:
                self.received[first[2:]] = h.hexdigest()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _source(self, reader, writer):
        block = os.urandom(65536)
        try:
            while True:
                writer.write(block)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _halfclose(self, reader, writer):
        try:
            writer.write(b"banner\n")
            await writer.drain()
            writer.write_eof()
            got = b""
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                got += data
            if got == b"bye":
                self.late_ok += 1
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds (from /proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")
