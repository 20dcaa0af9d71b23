# Client-side probes for xtask/tests/mesh.rs, run inside the testbed's client namespace as
# `python3 mesh_scripts.py MODE ARGS...`. Every socket has a timeout: nothing here can hang.
import os
import random
import socket
import struct
import sys
import time


def http_get(s):
    """One keep-alive GET on s; the body. EOFError if the peer closed."""
    s.sendall(b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    length = [l.split(b":", 1)[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    n = int(length[0]) if length else 0
    while len(body) < n:
        d = s.recv(65536)
        if not d:
            raise EOFError
        body += d
    return body.decode(errors="replace")


def outcome(s):
    """What the next request on an open connection gets, within 5 s."""
    s.settimeout(5)
    t = time.time()
    try:
        http_get(s)
        return "ANSWERED"
    except ConnectionResetError:
        return "RESET %.2f" % (time.time() - t)
    except socket.timeout:
        return "TIMEOUT"
    except EOFError:
        return "EOF"
    except OSError as e:
        return "ERROR %s" % e


def held(ip, port, want, go, limit):
    """Opens connections until one is answered by task `want`, keeps it, waits for the file
    `go` (at most `limit` s), then uses it once."""
    for _ in range(12):
        s = socket.create_connection((ip, int(port)), timeout=5)
        if ("Hostname: " + want) in http_get(s):
            break
        s.close()
    else:
        print("NOTFOUND", flush=True)
        return
    print("CONNECTED", flush=True)
    deadline = time.time() + float(limit)
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.1)
    print(outcome(s), flush=True)


def idle(ip, port, *pauses):
    """One connection: a request, then after each pause another; prints each outcome."""
    s = socket.create_connection((ip, int(port)), timeout=5)
    http_get(s)
    print("FIRST ANSWERED", flush=True)
    for p in pauses:
        time.sleep(float(p))
        r = outcome(s)
        print("AFTER %s %s" % (p, r), flush=True)
        if not r.startswith("ANSWERED"):
            return


def udp(ip, port, count):
    """`count` datagrams, each from a new socket (a new source port); one line per answer."""
    for _ in range(int(count)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"mesh", (ip, int(port)))
        try:
            data, _ = s.recvfrom(65535)
            print(data.split(b"\n")[0].decode(errors="replace"), flush=True)
        except socket.timeout:
            print("TIMEOUT", flush=True)
        s.close()


def df(ip, port):
    """A 1472-byte datagram with DF; after an ICMP fragmentation-needed the socket's path
    MTU drops: prints it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    s.connect((ip, int(port)))
    s.settimeout(1)
    for _ in range(3):
        try:
            s.send(b"x" * 1472)
        except OSError:
            pass
        time.sleep(0.5)
    print("mtu=%d" % s.getsockopt(socket.IPPROTO_IP, 14), flush=True)  # IP_MTU


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, frag=0x4000, opts=b"", bad=False):
    ihl = 5 + len(opts) // 4
    h = struct.pack("!BBHHHBBH4s4s", (4 << 4) | ihl, 0, ihl * 4 + len(payload),
                    random.randint(0, 65535), frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + opts
    c = csum(h) ^ (0x5A5A if bad else 0)
    return h[:10] + struct.pack("!H", c) + h[12:] + payload


def tcp(src, dst, sport, dport, flags):
    h = struct.pack("!HHIIBBHHH", sport, dport, random.randint(0, 2**32 - 1), 0, 5 << 4, flags, 65535, 0, 0)
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(h))
    return h[:16] + struct.pack("!H", csum(ph + h)) + h[18:]


def hostile(iface, src_mac, dst_mac, src, dst, port, empty_port, count):
    """Raw frames from the client's eth0 (bypassing its stack) to a published port:
    `count` of each kind. Prints how many it sent."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    port, empty_port = int(port), int(empty_port)
    sent = 0
    for _ in range(int(count)):
        sp = random.randint(20000, 60000)
        frames = [
            ipv4(src, dst, 6, tcp(src, dst, sp, port, 0x02), bad=True),               # bad IPv4 checksum
            ipv4(src, dst, 6, tcp(src, dst, sp, port, 0x02), opts=b"\x01\x01\x01\x00"),  # IP options
            ipv4(src, dst, 6, tcp(src, dst, sp, port, 0x02), frag=0x2000),           # first fragment
            ipv4(src, dst, 6, tcp(src, dst, sp, port, 0x03)),                        # SYN+FIN
            ipv4(src, dst, 6, struct.pack("!HH", sp, port) + os.urandom(5)),          # random bytes
            ipv4(src, dst, 6, tcp(src, dst, sp, port, 0x10)),                        # ACK, no flow
            ipv4(src, dst, 6, tcp(src, dst, sp, empty_port, 0x02)),                  # no task
        ]
        for f in frames:
            s.send(eth + f)
            sent += 1
    print("sent %d" % sent, flush=True)


if __name__ == "__main__":
    {"held": held, "idle": idle, "udp": udp, "df": df, "hostile": hostile}[sys.argv[1]](*sys.argv[2:])
