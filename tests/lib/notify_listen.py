#!/usr/bin/env python3
"""A stand-in for systemd's notification socket, for tests.

  notify_listen.py ADDRESS OUT

Binds an AF_UNIX datagram socket at ADDRESS (a path, or '@name' for an abstract
socket, as NOTIFY_SOCKET spells it), then writes one line to OUT per datagram:
"<monotonic ms> <sender pid> <KEY=VALUE lines joined by '|'>", flushed at once.
Prints "listening" on stdout once bound. Ends on SIGTERM.
"""
import os
import signal
import socket
import struct
import sys
import time


def main():
    addr, out = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bind = "\0" + addr[1:] if addr.startswith("@") else addr
    s.bind(bind)
    # SO_PASSCRED: who sent it (systemd checks the pid for NotifyAccess=main).
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("listening", flush=True)
    with open(out, "a", buffering=1) as f:
        while True:
            msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = 0
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", data[:12])[0]
            text = msg.decode("utf-8", "replace").strip("\n").replace("\n", "|")
            f.write("%d %d %s\n" % (time.monotonic() * 1000, pid, text))


if __name__ == "__main__":
    main()
