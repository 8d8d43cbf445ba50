"""An NTLMv2 acceptor for HTTP ``Negotiate``/``NTLM`` authentication, as WinRM does it.

Written from [MS-NLMP] (NT LAN Manager Authentication Protocol): 2.2.1 message layouts,
2.2.2.1 AV_PAIR, 3.3.2 NTLMv2 (NTOWFv2, NTProofStr, SessionBaseKey), 3.4.5.1 KXKEY,
3.1.5.1.2 MIC, and [MS-WSMV] 2.1 / RFC 4559 for the HTTP exchange; channel bindings per
RFC 5929 (``tls-server-end-point``) and RFC 2744 (gss_channel_bindings_struct). MD4 (RFC 1320)
and RC4 are implemented here because OpenSSL 3 hashlib builds may lack MD4.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time

SIGNATURE = b"NTLMSSP\x00"

NEGOTIATE_UNICODE = 0x00000001
REQUEST_TARGET = 0x00000004
NEGOTIATE_SIGN = 0x00000010
NEGOTIATE_SEAL = 0x00000020
NEGOTIATE_NTLM = 0x00000200
NEGOTIATE_ALWAYS_SIGN = 0x00008000
TARGET_TYPE_DOMAIN = 0x00010000
NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NEGOTIATE_TARGET_INFO = 0x00800000
NEGOTIATE_VERSION = 0x02000000
NEGOTIATE_128 = 0x20000000
NEGOTIATE_KEY_EXCH = 0x40000000
NEGOTIATE_56 = 0x80000000

AV_EOL, AV_NB_COMPUTER, AV_NB_DOMAIN, AV_DNS_COMPUTER, AV_DNS_DOMAIN = 0, 1, 2, 3, 4
AV_FLAGS, AV_TIMESTAMP, AV_CHANNEL_BINDINGS = 6, 7, 10
AV_FLAG_MIC = 0x2


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4."""

    def f(x: int, y: int, z: int) -> int:
        return (x & y) | (~x & z)

    def g(x: int, y: int, z: int) -> int:
        return (x & y) | (x & z) | (y & z)

    def h(x: int, y: int, z: int) -> int:
        return x ^ y ^ z

    def rotl(v: int, s: int) -> int:
        v &= 0xFFFFFFFF
        return ((v << s) | (v >> (32 - s))) & 0xFFFFFFFF

    msg = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off : off + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            if i % 4 == 0:
                a = rotl(a + f(b, c, d) + x[k], s)
            elif i % 4 == 1:
                d = rotl(d + f(a, b, c) + x[k], s)
            elif i % 4 == 2:
                c = rotl(c + f(d, a, b) + x[k], s)
            else:
                b = rotl(b + f(c, d, a) + x[k], s)
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            if i % 4 == 0:
                a = rotl(a + g(b, c, d) + x[k] + 0x5A827999, s)
            elif i % 4 == 1:
                d = rotl(d + g(a, b, c) + x[k] + 0x5A827999, s)
            elif i % 4 == 2:
                c = rotl(c + g(d, a, b) + x[k] + 0x5A827999, s)
            else:
                b = rotl(b + g(c, d, a) + x[k] + 0x5A827999, s)
        order = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
        for i in range(16):
            k, s = order[i], (3, 9, 11, 15)[i % 4]
            if i % 4 == 0:
                a = rotl(a + h(b, c, d) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 1:
                d = rotl(d + h(a, b, c) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 2:
                c = rotl(c + h(d, a, b) + x[k] + 0x6ED9EBA1, s)
            else:
                b = rotl(b + h(c, d, a) + x[k] + 0x6ED9EBA1, s)
        a, b = (a + aa) & 0xFFFFFFFF, (b + bb) & 0xFFFFFFFF
        c, d = (c + cc) & 0xFFFFFFFF, (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)


class Rc4:
    """An RC4 keystream; NTLM sealing keeps one per direction for the whole session."""

    def __init__(self, key: bytes) -> None:
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self._s = s
        self._i = self._j = 0

    def update(self, data: bytes) -> bytes:
        s, i, j = self._s, self._i, self._j
        out = bytearray()
        for byte in data:
            i = (i + 1) & 0xFF
            j = (j + s[i]) & 0xFF
            s[i], s[j] = s[j], s[i]
            out.append(byte ^ s[(s[i] + s[j]) & 0xFF])
        self._i, self._j = i, j
        return bytes(out)


def rc4(key: bytes, data: bytes) -> bytes:
    return Rc4(key).update(data)


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


def ntowfv2(password: str, user: str, domain: str) -> bytes:
    """[MS-NLMP] 3.3.2 NTOWFv2."""
    nt_hash = md4(password.encode("utf-16-le"))
    return _hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le"))


def channel_bindings_hash(cert_der: bytes) -> bytes:
    """MD5 of the gss_channel_bindings_struct with application data
    ``tls-server-end-point:`` + the certificate hash (RFC 5929 4.1: SHA-256 when the
    certificate's signature uses MD5 or SHA-1, else its own hash; ours is SHA-256)."""
    app = b"tls-server-end-point:" + hashlib.sha256(cert_der).digest()
    struct_ = struct.pack("<IIIII", 0, 0, 0, 0, len(app)) + app
    return hashlib.md5(struct_).digest()


def _field(msg: bytes, off: int) -> bytes:
    length, _max, offset = struct.unpack_from("<HHI", msg, off)
    if offset + length > len(msg):
        raise ValueError("field past the end of the message")
    return msg[offset : offset + length]


def _av_pairs(blob: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(blob):
        av_id, av_len = struct.unpack_from("<HH", blob, pos)
        pos += 4
        if av_id == AV_EOL:
            break
        out[av_id] = blob[pos : pos + av_len]
        pos += av_len
    return out


class NtlmError(ValueError):
    """Authentication failed (bad message, wrong credentials, wrong channel binding)."""


class NtlmAcceptor:
    """One NTLM handshake on one connection: NEGOTIATE -> CHALLENGE, AUTHENTICATE -> user."""

    def __init__(
        self, username: str, password: str, computer: str, domain: str, cbt: bytes | None = None
    ) -> None:
        self.username = username
        self.password = password
        self.computer = computer.upper()
        self.domain = domain.upper()
        self.cbt = cbt
        self.negotiate: bytes | None = None
        self.challenge: bytes | None = None
        self.server_challenge = os.urandom(8)

    def step(self, token: bytes) -> bytes | None:
        """Consume a client token; return the CHALLENGE for a NEGOTIATE, or None once the
        AUTHENTICATE verified (raises :class:`NtlmError` when it does not)."""
        if len(token) < 12 or not token.startswith(SIGNATURE):
            raise NtlmError("not an NTLMSSP message")
        mtype = struct.unpack_from("<I", token, 8)[0]
        if mtype == 1:
            self.negotiate = token
            self.challenge = self._challenge(token)
            return self.challenge
        if mtype == 3 and self.challenge is not None:
            self._authenticate(token)
            return None
        raise NtlmError(f"unexpected NTLM message type {mtype}")

    def _challenge(self, negotiate: bytes) -> bytes:
        client = struct.unpack_from("<I", negotiate, 12)[0] if len(negotiate) >= 16 else 0
        flags = (
            NEGOTIATE_UNICODE
            | REQUEST_TARGET
            | NEGOTIATE_NTLM
            | NEGOTIATE_ALWAYS_SIGN
            | TARGET_TYPE_DOMAIN
            | NEGOTIATE_EXTENDED_SESSIONSECURITY
            | NEGOTIATE_TARGET_INFO
            | NEGOTIATE_VERSION
        )
        for opt in (
            NEGOTIATE_SIGN,
            NEGOTIATE_SEAL,
            NEGOTIATE_128,
            NEGOTIATE_56,
            NEGOTIATE_KEY_EXCH,
        ):
            if client & opt:
                flags |= opt
        target = self.domain.encode("utf-16-le")
        ts = struct.pack("<Q", int((time.time() + 11644473600) * 10_000_000))
        info = b""
        for av_id, value in (
            (AV_NB_DOMAIN, self.domain.encode("utf-16-le")),
            (AV_NB_COMPUTER, self.computer.encode("utf-16-le")),
            (AV_DNS_DOMAIN, f"{self.domain.lower()}.test".encode("utf-16-le")),
            (
                AV_DNS_COMPUTER,
                f"{self.computer.lower()}.{self.domain.lower()}.test".encode("utf-16-le"),
            ),
            (AV_TIMESTAMP, ts),
        ):
            info += struct.pack("<HH", av_id, len(value)) + value
        info += struct.pack("<HH", AV_EOL, 0)
        head_len = 56
        version = bytes([10, 0]) + struct.pack("<H", 20348) + b"\x00\x00\x00\x0f"
        msg = (
            SIGNATURE
            + struct.pack("<I", 2)
            + struct.pack("<HHI", len(target), len(target), head_len)
            + struct.pack("<I", flags)
            + self.server_challenge
            + b"\x00" * 8
            + struct.pack("<HHI", len(info), len(info), head_len + len(target))
            + version
            + target
            + info
        )
        return msg

    def _authenticate(self, msg: bytes) -> None:
        assert self.challenge is not None and self.negotiate is not None
        try:
            nt = _field(msg, 20)
            domain = _field(msg, 28).decode("utf-16-le")
            user = _field(msg, 36).decode("utf-16-le")
            enc_key = _field(msg, 52)
            flags = struct.unpack_from("<I", msg, 60)[0]
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise NtlmError(f"malformed AUTHENTICATE: {exc}") from exc
        want_user = self.username.split("\\")[-1].split("@")[0]
        if user.split("@")[0].lower() != want_user.lower() or not user:
            raise NtlmError("unknown user")
        if len(nt) < 48:
            raise NtlmError("not an NTLMv2 response (NTLMv1 and LM are refused)")
        proof, blob = nt[:16], nt[16:]
        key = ntowfv2(self.password, user, domain)
        if not hmac.compare_digest(_hmac_md5(key, self.server_challenge + blob), proof):
            raise NtlmError("wrong password")
        avs = _av_pairs(blob[28:])
        if self.cbt is not None:
            got = avs.get(AV_CHANNEL_BINDINGS)
            # WinRM's default CbtHardeningLevel "Relaxed": a missing (or all-zero) binding
            # is accepted, a wrong one is not.
            if got and got != b"\x00" * 16 and got != self.cbt:
                raise NtlmError("channel binding mismatch")
        session_base = _hmac_md5(key, proof)
        exported = session_base
        if flags & NEGOTIATE_KEY_EXCH and len(enc_key) == 16:
            exported = rc4(session_base, enc_key)
        av_flags = struct.unpack("<I", avs[AV_FLAGS])[0] if len(avs.get(AV_FLAGS, b"")) == 4 else 0
        if av_flags & AV_FLAG_MIC:
            if len(msg) < 88:
                raise NtlmError("MIC announced but missing")
            mic = msg[72:88]
            zeroed = msg[:72] + b"\x00" * 16 + msg[88:]
            want = _hmac_md5(exported, self.negotiate + self.challenge + zeroed)
            if not hmac.compare_digest(mic, want):
                raise NtlmError("MIC mismatch")
        self.user = user
        self.domain_sent = domain
        self.exported_key = exported
        self.flags = flags

    def sign(self, message: bytes, seq: int, server: bool = True) -> bytes:
        """An NTLM message signature with extended session security ([MS-NLMP] 3.4.4.2)
        on a fresh RC4 handle: what the SPNEGO mechListMIC uses, after which both sides
        reset their NTLM crypto state (pyspnego ``_reset_ntlm_crypto_state``)."""
        sign_key, seal_key = session_keys(self.exported_key, self.flags, server)
        return _mac(Rc4(seal_key), sign_key, seq, message, self.flags)

    def session(self, seq: int = 0) -> NtlmSession:
        """The sealing/signing state for WinRM message encryption after this handshake;
        ``seq`` 1 after a SPNEGO mechListMIC exchange (the RC4 handles are reset, the
        sequence numbers are not: pyspnego ``_reset_ntlm_crypto_state``)."""
        return NtlmSession(self.exported_key, self.flags, seq)


def session_keys(exported: bytes, flags: int, server: bool) -> tuple[bytes, bytes]:
    """SIGNKEY and SEALKEY for one direction ([MS-NLMP] 3.4.5.2, 3.4.5.3)."""
    side = "server-to-client" if server else "client-to-server"
    sign_key = hashlib.md5(
        exported + f"session key to {side} signing key magic constant\0".encode()
    ).digest()
    base = (
        exported
        if flags & NEGOTIATE_128
        else exported[:7]
        if flags & NEGOTIATE_56
        else exported[:5]
    )
    seal_key = hashlib.md5(
        base + f"session key to {side} sealing key magic constant\0".encode()
    ).digest()
    return sign_key, seal_key


def _mac(handle: Rc4, sign_key: bytes, seq: int, message: bytes, flags: int) -> bytes:
    seq_b = struct.pack("<I", seq)
    checksum = _hmac_md5(sign_key, seq_b + message)[:8]
    if flags & NEGOTIATE_KEY_EXCH:
        checksum = handle.update(checksum)
    return struct.pack("<I", 1) + checksum + seq_b


class NtlmSession:
    """NTLM sealing for WinRM's HTTP message encryption ([MS-NLMP] 3.4.3 SEAL, 3.4.4 SIGN;
    [MS-WSMV] 2.2.9.1 encrypted message): one RC4 stream and sequence number per
    direction."""

    def __init__(self, exported: bytes, flags: int, seq: int = 0) -> None:
        self.flags = flags
        self._in_sign, in_seal = session_keys(exported, flags, server=False)
        self._out_sign, out_seal = session_keys(exported, flags, server=True)
        self._in = Rc4(in_seal)
        self._out = Rc4(out_seal)
        self._seq_in = self._seq_out = seq

    def unwrap(self, signature: bytes, sealed: bytes) -> bytes:
        message = self._in.update(sealed)
        want = _mac(self._in, self._in_sign, self._seq_in, message, self.flags)
        if not hmac.compare_digest(want, signature):
            raise NtlmError("bad signature on an encrypted message")
        self._seq_in += 1
        return message

    def wrap(self, message: bytes) -> tuple[bytes, bytes]:
        sealed = self._out.update(message)
        signature = _mac(self._out, self._out_sign, self._seq_out, message, self.flags)
        self._seq_out += 1
        return signature, sealed


# --- SPNEGO (RFC 4178) around NTLM, as Windows' Negotiate package and pyspnego send it ------

SPNEGO_OID = bytes.fromhex("06062b0601050502")
NTLM_OID = bytes.fromhex("060a2b06010401823702020a")
ACCEPT_COMPLETED, ACCEPT_INCOMPLETE, REJECT = 0, 1, 2


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, value, start of the element, end of the element)."""
    start = pos
    if pos + 2 > len(data):
        raise NtlmError("truncated DER")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise NtlmError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise NtlmError("truncated DER")
    return tag, data[pos : pos + length], start, pos + length


def _fields(seq: bytes) -> dict[int, bytes]:
    """The context-tagged fields [n] of a DER SEQUENCE body, each with its raw content."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(seq):
        tag, value, _s, pos = _read_tlv(seq, pos)
        out[tag & 0x1F] = value
    return out


def neg_token_resp(
    state: int, token: bytes | None = None, mic: bytes | None = None, mech: bool = False
) -> bytes:
    body = _tlv(0xA0, _tlv(0x0A, bytes([state])))
    if mech:
        body += _tlv(0xA1, NTLM_OID)
    if token is not None:
        body += _tlv(0xA2, _tlv(0x04, token))
    if mic is not None:
        body += _tlv(0xA3, _tlv(0x04, mic))
    return _tlv(0xA1, _tlv(0x30, body))


class SpnegoAcceptor:
    """The acceptor side of SPNEGO with NTLM as the only mechanism (no Kerberos here)."""

    def __init__(self, ntlm: NtlmAcceptor) -> None:
        self.ntlm = ntlm
        self.mech_list: bytes | None = None
        self.mic_exchanged = False

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """(reply token, done). Raises :class:`NtlmError` on failure."""
        if token[:1] == b"\x60":
            tag, inner, _s, _e = _read_tlv(token, 0)
            if not inner.startswith(SPNEGO_OID):
                raise NtlmError("not SPNEGO")
            tag, init, _s, _e = _read_tlv(inner, len(SPNEGO_OID))
            if tag != 0xA0:
                raise NtlmError("not a NegTokenInit")
            _t, seq, _s, _e = _read_tlv(init, 0)
            fields = _fields(seq)
            if 0 not in fields:
                raise NtlmError("NegTokenInit without mechTypes")
            self.mech_list = fields[0]  # the MechTypeList SEQUENCE, as the MIC covers it
            _t, raw_list, _s, _e = _read_tlv(self.mech_list, 0)
            mechs = []
            pos = 0
            while pos < len(raw_list):
                _tag, _v, start, pos = _read_tlv(raw_list, pos)
                mechs.append(raw_list[start:pos])
            if NTLM_OID not in mechs:
                return neg_token_resp(REJECT), True
            if mechs[0] != NTLM_OID or 2 not in fields:
                # Our mechanism is not the initiator's first choice: ask for NTLM.
                return neg_token_resp(ACCEPT_INCOMPLETE, mech=True), False
            _t, mech_token, _s, _e = _read_tlv(fields[2], 0)
            out = self.ntlm.step(mech_token)
            return neg_token_resp(ACCEPT_INCOMPLETE, out, mech=True), False
        if token[:1] != b"\xa1":
            raise NtlmError("not a SPNEGO token")
        _t, resp, _s, _e = _read_tlv(token, 0)
        _t, seq, _s, _e = _read_tlv(resp, 0)
        fields = _fields(seq)
        if 2 not in fields:
            raise NtlmError("NegTokenResp without a responseToken")
        _t, mech_token, _s, _e = _read_tlv(fields[2], 0)
        out = self.ntlm.step(mech_token)
        if out is not None:
            return neg_token_resp(ACCEPT_INCOMPLETE, out, mech=True), False
        assert self.mech_list is not None
        mic = None
        if 3 in fields:
            _t, client_mic, _s, _e = _read_tlv(fields[3], 0)
            if not hmac.compare_digest(client_mic, self.ntlm.sign(self.mech_list, 0, False)):
                raise NtlmError("mechListMIC mismatch")
            mic = self.ntlm.sign(self.mech_list, 0, True)
            self.mic_exchanged = True
        return neg_token_resp(ACCEPT_COMPLETED, mic=mic), True
