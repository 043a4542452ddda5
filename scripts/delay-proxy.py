#!/usr/bin/env python3
"""A delay and loss relay for benchmarks (issue #15), Python 3 standard library only.

This kernel has no netem qdisc (`tc qdisc add dev lo root netem` answers "Specified
qdisc kind is unknown"), so the round-trip delay is made here, in user space:

    delay-proxy.py --tcp-target 127.0.0.1:PORT --udp-target 127.0.0.1:PORT \
                   --delay-ms 50 [--loss 0.01 --seed 1] [--tcp-loss rto|none] [--log FILE]

It binds 127.0.0.1:0 (TCP and/or UDP, one per target given) and prints ONE JSON line on
stdout once bound: {"tcp": "127.0.0.1:P", "udp": "127.0.0.1:Q"}. Clients connect there
and are relayed to the targets.

Delay: every UDP datagram and every TCP chunk (what one read returned) is held D ms in
each direction, so the round trip is 2D. Order is kept (constant delay). Bandwidth is
not limited.

TCP handshake: the kernel completes a client's TCP handshake with this relay at once, so
the relay puts the handshake's round trip back: a connection's first client bytes leave
the relay no earlier than accept + 2D + D (SYN out, SYN-ACK back, then the data's own
D). The log records the SYN and SYN-ACK as zero-byte events.

Loss, UDP: each datagram, either way, is dropped with probability P (random.Random(seed)).
The sender's own timers (DTLS retransmission) must recover; the log marks drops.

Loss, TCP: cannot be made honestly in user space (the kernel's TCP below the relay never
loses anything, so no retransmission, no RTO backoff and no congestion response happen).
--tcp-loss none (the default) leaves TCP lossless. --tcp-loss rto APPROXIMATES it: a chunk
of n bytes counts as lost with probability 1-(1-P)^ceil(n/1460) (one chance per 1460-byte
segment) and is held back an extra RTO, and everything behind it in that direction waits
too (head-of-line blocking); a lost SYN or SYN-ACK costs 1 s (RFC 6298's initial RTO),
a lost data chunk RTT + 200 ms (Linux: smoothed RTT + its 200 ms minimum RTO variance
term). The retransmitted segment (at most 1460 bytes) is counted again in the bytes sent.
Fast retransmit and tail-loss probes are not modelled: a figure made this way is a model,
not a measurement, and the log says `"tcp_loss": "rto"`.

Log (JSON, to --log FILE or else to stdout after the ports line), written on SIGTERM or
SIGINT. SIGUSR1 forgets everything logged so far (a warm-up before the measured exchange).
It holds every event, on the CLIENT's clock (c2s: when the client sent it; s2c: when the
client received it), and a summary:
  - per direction: packets (datagrams, or TCP chunks), bytes sent (payload only: no IP,
    UDP or TCP headers; dropped datagrams count, they were sent), drops, retransmitted;
  - round_trips_flights: the client's waits. Events in client-clock order collapse into
    flights; each client flight answered by a server flight is one round trip, if the
    answer came at least RTT/2 after the client flight began (a gap: so that a client's
    ACK between two parts of one server flight is no round trip). A client retransmitting
    after a timeout is no new round trip (it shows in the span, not here);
  - span_ms: the client's first byte sent to its last byte received; span_rtts = span / RTT;
  - per connection (TCP) or client address (UDP): whether the first ClientHello offered a
    TLS 1.3 pre_shared_key (resumption), whether the server's answer accepted it, the
    version the ServerHello chose, and whether a cookie exchange happened (DTLS 1.2 HelloVerifyRequest, TLS/DTLS 1.3
    HelloRetryRequest).
"""

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import sys
import time

SEGMENT = 1460
# RFC 8446 4.1.3: the Random of a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
EXT_PRE_SHARED_KEY = 41
EXT_SUPPORTED_VERSIONS = 43
VERSIONS = {0x0303: "TLS 1.2", 0x0304: "TLS 1.3", 0xFEFD: "DTLS 1.2", 0xFEFC: "DTLS 1.3"}


def parse_hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def inspect_handshake(data, dtls):
    """The first handshake message of a TLS (stream) or DTLS (datagram) record.

    Returns a dict {"msg": "client_hello"|"server_hello"|"hello_retry_request"|
    "hello_verify_request", "psk": bool, "version": str} or None when it is not one we
    read. "version" is what a ServerHello chose (its supported_versions, else its
    legacy_version): "TLS 1.2", "TLS 1.3", "DTLS 1.2", "DTLS 1.3"; None for the others.
    """
    rec_hdr = 13 if dtls else 5
    hs_hdr = 12 if dtls else 4
    if len(data) < rec_hdr + hs_hdr or data[0] != 22:
        return None
    rec_len = int.from_bytes(data[rec_hdr - 2 : rec_hdr], "big")
    rec = data[rec_hdr : rec_hdr + rec_len]
    if len(rec) < hs_hdr:
        return None
    kind = rec[0]
    body = rec[hs_hdr:]
    if kind == 3:
        return {"msg": "hello_verify_request", "psk": False, "version": None}
    if kind not in (1, 2):
        return None
    try:
        version = int.from_bytes(body[0:2], "big")
        i = 2
        rnd = body[i : i + 32]
        i += 32
        i += 1 + body[i]  # session id
        if kind == 1:
            if dtls:
                i += 1 + body[i]  # cookie
            i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
            i += 1 + body[i]  # compression methods
        else:
            i += 2 + 1  # cipher suite, compression method
        if i + 2 > len(body):
            psk = False
        else:
            end = i + 2 + int.from_bytes(body[i : i + 2], "big")
            i += 2
            psk = False
            while i + 4 <= min(end, len(body)):
                ext = int.from_bytes(body[i : i + 2], "big")
                n = int.from_bytes(body[i + 2 : i + 4], "big")
                if ext == EXT_PRE_SHARED_KEY:
                    psk = True
                if ext == EXT_SUPPORTED_VERSIONS and kind == 2 and n == 2:
                    version = int.from_bytes(body[i + 4 : i + 6], "big")
                i += 4 + n
    except IndexError:
        return None
    if kind == 1:
        return {"msg": "client_hello", "psk": psk, "version": None}
    if rnd == HRR_RANDOM:
        return {"msg": "hello_retry_request", "psk": False, "version": None}
    return {"msg": "server_hello", "psk": psk, "version": VERSIONS.get(version, hex(version))}


class Relay:
    def __init__(self, args):
        self.delay = args.delay_ms / 1000.0
        self.loss = args.loss
        self.tcp_loss = args.tcp_loss
        self.rng = random.Random(args.seed)
        self.args = args
        self.t0 = time.monotonic()
        self.events = []
        self.conns = []
        self.udp_peers = {}
        self.next_id = 0

    def now(self):
        return time.monotonic() - self.t0

    def reset(self):
        self.events = []
        self.conns = []

    def conn(self, proto, peer):
        c = {"id": self.next_id, "proto": proto, "client": f"{peer[0]}:{peer[1]}",
             "client_hello_psk": None, "server_accepted_psk": None, "version": None, "cookie_exchange": False,
             "client_hellos": 0}
        self.next_id += 1
        self.conns.append(c)
        return c

    def event(self, c, direction, kind, nbytes, client_t, dropped=False, retransmitted=0):
        self.events.append({"conn": c["id"], "proto": c["proto"], "dir": direction, "kind": kind,
                            "bytes": nbytes, "t_ms": round(client_t * 1000, 3), "dropped": dropped,
                            "retransmitted": retransmitted})

    def note_hello(self, c, direction, data, dtls):
        h = inspect_handshake(data, dtls)
        if h is None:
            return
        if h["msg"] == "client_hello" and direction == "c2s":
            c["client_hellos"] += 1
            if c["client_hello_psk"] is None:
                c["client_hello_psk"] = h["psk"]
        elif h["msg"] == "server_hello" and direction == "s2c" and c["server_accepted_psk"] is None:
            c["server_accepted_psk"] = h["psk"]
            c["version"] = h["version"]
        elif h["msg"] in ("hello_retry_request", "hello_verify_request") and direction == "s2c":
            c["cookie_exchange"] = True

    def tcp_lost(self, nbytes):
        if self.tcp_loss != "rto" or self.loss <= 0:
            return False
        segs = max(1, math.ceil(nbytes / SEGMENT))
        return self.rng.random() < 1 - (1 - self.loss) ** segs

    # ---- TCP ----

    async def tcp_client(self, creader, cwriter):
        peer = cwriter.get_extra_info("peername")
        c = self.conn("tcp", peer)
        accepted = self.now()
        d = self.delay
        # The handshake's round trip, put back: SYN, SYN-ACK (each may be lost: +1 s).
        syn_lost = self.tcp_lost(0) if self.tcp_loss == "rto" else False
        synack_lost = self.tcp_lost(0) if self.tcp_loss == "rto" else False
        self.event(c, "c2s", "syn", 0, accepted, dropped=syn_lost)
        syn_at_server = accepted + d + (1.0 if syn_lost else 0.0)
        synack_at_client = syn_at_server + d + (1.0 if synack_lost else 0.0)
        self.event(c, "s2c", "synack", 0, synack_at_client, dropped=synack_lost)
        try:
            sreader, swriter = await asyncio.open_connection(*self.args.tcp_target)
        except OSError as e:
            print(f"delay-proxy: cannot reach {self.args.tcp_target}: {e}", file=sys.stderr)
            cwriter.close()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(
                self.tcp_pump(c, creader, swriter, "c2s", synack_at_client),
                self.tcp_pump(c, sreader, cwriter, "s2c", syn_at_server),
            )
        except asyncio.CancelledError:
            pass  # the relay is stopping: the log is being written
        finally:
            for w in (cwriter, swriter):
                w.close()

    async def tcp_pump(self, c, reader, writer, direction, not_before):
        """Copy reader to writer, each chunk delayed; `not_before`: the earliest time (relay
        clock) the sender could have sent (the end of the emulated TCP handshake)."""
        queue = asyncio.Queue()
        d = self.delay
        rto = 2 * d + 0.2
        last_delivery = 0.0
        first = True

        async def writer_task():
            while True:
                item = await queue.get()
                if item is None:
                    break
                at, data = item
                wait = at - self.now()
                if wait > 0:
                    await asyncio.sleep(wait)
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass

        task = asyncio.ensure_future(writer_task())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                sent = max(self.now(), not_before)
                lost = self.tcp_lost(len(data))
                at = max(sent + d + (rto if lost else 0.0), last_delivery)
                last_delivery = at
                client_t = sent if direction == "c2s" else at
                if first:
                    self.note_hello(c, direction, data, dtls=False)
                    first = False
                self.event(c, direction, "data", len(data), client_t, dropped=lost,
                           retransmitted=min(len(data), SEGMENT) if lost else 0)
                queue.put_nowait((at, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(None)
        await task

    # ---- UDP ----

    def udp_from_client(self, data, addr):
        peer = self.udp_peers.get(addr)
        if peer is None:
            # One upstream socket per client address, so that the server's answers
            # find their way back; datagrams due before it is open wait in `pending`.
            peer = {"conn": self.conn("udp", addr), "transport": None, "pending": []}
            self.udp_peers[addr] = peer
            asyncio.ensure_future(self.udp_open(addr, peer))
        elif not any(c is peer["conn"] for c in self.conns):
            peer["conn"] = self.conn("udp", addr)  # logged afresh after SIGUSR1

        def send(b):
            if peer["transport"] is None:
                peer["pending"].append(b)
            else:
                peer["transport"].sendto(b)

        self.udp_send(peer["conn"], "c2s", data, send)

    async def udp_open(self, addr, peer):
        relay = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data, _src):
                relay.udp_send(peer["conn"], "s2c", data, lambda b: relay.udp_listener.sendto(b, addr))

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.args.udp_target)
        peer["transport"] = transport
        for b in peer["pending"]:
            transport.sendto(b)
        peer["pending"] = []

    def udp_send(self, c, direction, data, send):
        now = self.now()
        dropped = self.loss > 0 and self.rng.random() < self.loss
        self.note_hello(c, direction, data, dtls=True)
        client_t = now if direction == "c2s" else now + self.delay
        self.event(c, direction, "datagram", len(data), client_t, dropped=dropped)
        if not dropped:
            asyncio.get_running_loop().call_later(self.delay, send, data)

    # ---- the log ----

    def summary(self):
        rtt_ms = 2 * self.delay * 1000
        out = {}
        for direction in ("c2s", "s2c"):
            ev = [e for e in self.events if e["dir"] == direction and e["kind"] != "syn" and e["kind"] != "synack"]
            out[direction] = {
                "packets": len(ev),
                "bytes": sum(e["bytes"] for e in ev) + sum(e["retransmitted"] for e in ev),
                "dropped": sum(1 for e in self.events if e["dir"] == direction and e["dropped"]),
                "retransmitted_bytes": sum(e["retransmitted"] for e in ev),
            }
        # The client's view: what it sent (dropped or not), what reached it (a TCP chunk
        # marked lost reached it, late: its t_ms includes the RTO).
        seen = sorted(
            (e for e in self.events if e["dir"] == "c2s" or not e["dropped"] or e["proto"] == "tcp"),
            # A tie: the client answers what it has received, so s2c first.
            key=lambda e: (e["t_ms"], 0 if e["dir"] == "s2c" else 1),
        )
        trips = 0
        flight_start = None  # when the current client flight began
        for e in seen:
            if e["dir"] == "c2s":
                if flight_start is None:
                    flight_start = e["t_ms"]
            elif flight_start is not None and e["t_ms"] - flight_start >= rtt_ms / 2:
                trips += 1
                flight_start = None
        sent = [e["t_ms"] for e in seen if e["dir"] == "c2s"]
        got = [e["t_ms"] for e in seen if e["dir"] == "s2c"]
        span = (max(got) - min(sent)) if sent and got else 0.0
        out["round_trips_flights"] = trips
        out["span_ms"] = round(span, 3)
        out["span_rtts"] = round(span / rtt_ms, 3) if rtt_ms > 0 else None
        out["connections"] = len(self.conns)
        return out

    def log(self):
        return {
            "delay_ms": self.args.delay_ms,
            "rtt_ms": 2 * self.args.delay_ms,
            "loss": self.loss,
            "seed": self.args.seed,
            "tcp_loss": self.tcp_loss if self.loss > 0 else "none",
            "summary": self.summary(),
            "connections": self.conns,
            "events": self.events,
        }


async def main():
    p = argparse.ArgumentParser(description="Delay and loss relay (see the module doc).")
    p.add_argument("--tcp-target", type=parse_hostport, help="HOST:PORT to relay TCP to")
    p.add_argument("--udp-target", type=parse_hostport, help="HOST:PORT to relay UDP to")
    p.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay, each direction (RTT = 2x)")
    p.add_argument("--loss", type=float, default=0.0, help="probability that a UDP datagram is dropped")
    p.add_argument("--seed", type=int, default=1, help="seed of the loss draws")
    p.add_argument("--tcp-loss", choices=("none", "rto"), default="none",
                   help="TCP under --loss: none (lossless) or rto (approximated, see the module doc)")
    p.add_argument("--log", help="write the JSON log here on SIGTERM/SIGINT (default: stdout)")
    args = p.parse_args()
    if not args.tcp_target and not args.udp_target:
        p.error("give --tcp-target and/or --udp-target")
    if not 0 <= args.loss < 1:
        p.error("--loss must be in [0, 1)")
    if args.delay_ms < 0:
        p.error("--delay-ms must be >= 0")

    relay = Relay(args)
    loop = asyncio.get_running_loop()
    ports = {}
    if args.tcp_target:
        server = await asyncio.start_server(relay.tcp_client, "127.0.0.1", 0)
        ports["tcp"] = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    if args.udp_target:

        class Listener(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.udp_from_client(data, addr)

        relay.udp_listener, _ = await loop.create_datagram_endpoint(Listener, local_addr=("127.0.0.1", 0))
        ports["udp"] = "127.0.0.1:%d" % relay.udp_listener.get_extra_info("sockname")[1]
    print(json.dumps(ports), flush=True)

    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, relay.reset)
    await stop.wait()
    text = json.dumps(relay.log())
    if args.log:
        with open(args.log + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.log + ".tmp", args.log)
    else:
        print(text, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
