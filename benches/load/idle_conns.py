#!/usr/bin/env python3
"""Hold N idle keep-alive client connections to a proxy, for the memory scenario.

    idle_conns.py PORT PATH N [HEADER ...]

Opens N connections to 127.0.0.1:PORT, sends one GET PATH on each (keep-alive) and reads
the whole answer, so every connection has served a request and sits idle the way a
browser's or an API client's pooled connection does. Then prints "ready N" and holds
them until its standard input closes. Exits 1 (with the reason) if any answer is not a
200 or a connection fails: an RSS read with fewer live connections would flatter the
target.
"""
import selectors
import socket
import sys


def main():
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    headers = "".join(h + "\r\n" for h in sys.argv[4:])
    req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode()
    sel = selectors.DefaultSelector()
    pending = {}
    socks = []
    batch = 500  # connections in flight at once: no accept-queue overflow
    opened = 0
    done = 0
    while done < n:
        while opened < n and len(pending) < batch:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            pending[s] = b""
            socks.append(s)
            opened += 1
        for key, _ in sel.select(timeout=10):
            s = key.fileobj
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"connection {done} closed before its answer")
            buf = pending[s] + chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if not sep:
                pending[s] = buf
                continue
            status = head.split(b" ", 2)[1]
            if status != b"200":
                sys.exit(f"answer {status.decode()} on connection {done}: {buf[:200]!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if len(body) < length:
                pending[s] = buf
                continue
            sel.unregister(s)
            del pending[s]
            done += 1
    print(f"ready {len(socks)}", flush=True)
    sys.stdin.read()
    # Still open? A proxy that dropped idle connections would show here.
    alive = 0
    for s in socks:
        try:
            alive += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    print(f"alive {alive}", flush=True)


if __name__ == "__main__":
    main()
