# SPDX-License-Identifier: MIT
"""A small MQTT 3.1.1 client on the standard library, for tests and the demo.

It speaks just enough of the protocol to publish (QoS 0 and 1, retained or
not), subscribe and read messages: tests must not depend on PyPI.
"""
import socket
import struct
import time


def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode('utf-8') if isinstance(s, str) else s
    return struct.pack('!H', len(b)) + b


class Client:
    def __init__(self, host, port, client_id='mqttlite', keepalive=60, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b''
        self._mid = 0
        self.pending = []  # messages read while waiting for an ack
        var = _str('MQTT') + bytes([4, 0x02]) + struct.pack('!H', keepalive)
        self._send(0x10, var + _str(client_id))
        ptype, body = self._read_packet()
        if ptype != 0x20 or body[1] != 0:
            raise ConnectionError('CONNACK refused: %r' % body)

    def _send(self, header, body):
        self.sock.sendall(bytes([header]) + _varint(len(body)) + body)

    def _complete(self):
        """Length of the first whole packet in the buffer, or 0."""
        mult, length, i = 1, 0, 1
        while True:
            if i >= len(self._buf):
                return 0
            b = self._buf[i]
            length += (b & 0x7f) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        return i + length if len(self._buf) >= i + length else 0

    def _read_packet(self):
        while not self._complete():
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError('connection closed')
            self._buf += chunk
        n = self._complete()
        header = self._buf[0]
        i = 1
        while self._buf[i] & 0x80:
            i += 1
        i += 1
        body, self._buf = self._buf[i:n], self._buf[n:]
        self._last_header = header
        return header & 0xf0, body

    def _next_mid(self):
        self._mid = self._mid % 65535 + 1
        return self._mid

    def publish(self, topic, payload, qos=0, retain=False):
        if isinstance(payload, str):
            payload = payload.encode('utf-8')
        header = 0x30 | (qos << 1) | (1 if retain else 0)
        body = _str(topic)
        mid = None
        if qos:
            mid = self._next_mid()
            body += struct.pack('!H', mid)
        self._send(header, body + payload)
        if qos == 1:
            self._wait_ack(0x40, mid)

    def _wait_ack(self, ptype, mid):
        while True:
            t, body = self._read_packet()
            if t == ptype and struct.unpack('!H', body[:2])[0] == mid:
                return body
            if t == 0x30:
                self.pending.append(self._decode_publish(body))

    def subscribe(self, topic_filter, qos=0):
        mid = self._next_mid()
        self._send(0x82, struct.pack('!H', mid) + _str(topic_filter) + bytes([qos]))
        body = self._wait_ack(0x90, mid)
        if body[2] == 0x80:
            raise ConnectionError('SUBACK failure for %s' % topic_filter)

    def _decode_publish(self, body):
        header = self._last_header
        tlen = struct.unpack('!H', body[:2])[0]
        topic = body[2:2 + tlen].decode('utf-8')
        pos = 2 + tlen
        qos = (header >> 1) & 3
        if qos:
            mid = struct.unpack('!H', body[pos:pos + 2])[0]
            pos += 2
            self._send(0x40, struct.pack('!H', mid))
        return (topic, body[pos:], bool(header & 1))

    def read_message(self, timeout=5.0):
        """Return (topic, payload bytes, retained) or None on timeout."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                t, body = self._read_packet()
            except socket.timeout:
                return None
            finally:
                self.sock.settimeout(10)
            if t == 0x30:
                return self._decode_publish(body)

    def ping(self):
        self._send(0xc0, b'')

    def close(self):
        try:
            self._send(0xe0, b'')
            self.sock.close()
        except OSError:
            pass
