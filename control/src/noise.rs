//! The Noise layer of Tailscale's control protocol ("ts2021"): the
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s` handshake with the ts2021 prologue, and the record
//! layer that carries the byte stream afterwards (protocol.md §2.4–§2.5).
//!
//! Everything here is sans-IO: functions take and return byte buffers, the async stream
//! in `ts2021::stream` drives them. Why not `snow`: ts2021's records use a *big-endian*
//! nonce counter, which generic Noise libraries cannot produce, and the handshake is small
//! enough that writing it on the crypto crates boringtun already links (x25519-dalek,
//! BLAKE2s, HMAC, ring's ChaCha20-Poly1305) costs no binary size.
//!
//! Wire layout (all integers big-endian):
//!
//! ```text
//! initiation (client → server, 101 bytes): version u16 | type 1 | len u16 = 96 |
//!                                          e.pub (32) | enc(s.pub) (48) | tag (16)
//! response   (server → client, 51 bytes):  type 2 | len u16 = 48 | e.pub (32) | tag (16)
//! error      (server → client):            type 3 | len u16 | ASCII text (unauthenticated)
//! record     (both ways, ≤ 4096 bytes):    type 4 | len u16 | ciphertext || tag
//! ```

use std::fmt;

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Digest};
use boringtun::x25519::{PublicKey, StaticSecret};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ringscale_keys::PrivateKey;

/// The Noise protocol name, hashed into the initial handshake state.
pub const PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Prefix of the prologue; the decimal protocol version follows it.
pub const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";

pub const MSG_TYPE_INITIATION: u8 = 1;
pub const MSG_TYPE_RESPONSE: u8 = 2;
pub const MSG_TYPE_ERROR: u8 = 3;
pub const MSG_TYPE_RECORD: u8 = 4;

/// Header of every message but the initiation: type (1) and length (2).
pub const HEADER_LEN: usize = 3;
/// The initiation header carries the protocol version in front: version (2), type, length.
pub const INITIATION_HEADER_LEN: usize = 5;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const INITIATION_PAYLOAD_LEN: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + TAG_LEN;
const RESPONSE_PAYLOAD_LEN: usize = KEY_LEN + TAG_LEN;
/// Total length of the client's initiation message.
pub const INITIATION_LEN: usize = INITIATION_HEADER_LEN + INITIATION_PAYLOAD_LEN;
/// Total length of the server's response message.
pub const RESPONSE_LEN: usize = HEADER_LEN + RESPONSE_PAYLOAD_LEN;
/// Largest frame on the wire, header included; receivers reject anything larger.
pub const MAX_FRAME_LEN: usize = 4096;
/// Largest ciphertext (plaintext + tag) one record carries.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Largest plaintext one record carries; senders split larger writes.
pub const MAX_PLAINTEXT_LEN: usize = MAX_CIPHERTEXT_LEN - TAG_LEN;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// A message of the wrong total size (expected, got).
    WrongSize { expected: usize, got: usize },
    /// A message header names a type we did not expect at this point.
    UnexpectedMessageType(u8),
    /// The length field of a handshake message does not match its fixed payload size.
    WrongLengthField { expected: usize, got: usize },
    /// A Diffie-Hellman step produced the all-zero secret (low-order point from the peer).
    LowOrderPoint(&'static str),
    /// An AEAD tag did not verify: wrong keys, corrupted or forged message.
    Decrypt(&'static str),
    /// The server refused the handshake with an (unauthenticated) error frame.
    ServerError(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongSize { expected, got } => {
                write!(f, "handshake message has {got} bytes, want {expected}")
            }
            Self::UnexpectedMessageType(t) => write!(f, "unexpected handshake message type {t}"),
            Self::WrongLengthField { expected, got } => {
                write!(
                    f,
                    "handshake message length field is {got}, want {expected}"
                )
            }
            Self::LowOrderPoint(step) => {
                write!(f, "computing {step}: peer key is a low-order point")
            }
            Self::Decrypt(step) => write!(f, "handshake authentication failed ({step})"),
            Self::ServerError(msg) => write!(f, "control server refused the handshake: {msg:?}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Why a transport record could not be sealed or opened. Every one is fatal for the
/// connection: after it the two sides' nonce counters can no longer agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A frame of a type other than "record" arrived after the handshake.
    UnexpectedMessageType(u8),
    /// The peer declared a frame larger than [`MAX_FRAME_LEN`].
    FrameTooLarge(usize),
    /// A frame too short to hold even the authentication tag.
    FrameTooShort(usize),
    /// The record's tag did not verify (corrupted, replayed, reordered or forged).
    Decrypt,
    /// 2^64-1 records were used on this key; the connection must be replaced.
    NonceExhausted,
    /// A single record was asked to carry more than [`MAX_PLAINTEXT_LEN`] bytes.
    PlaintextTooLarge(usize),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedMessageType(t) => {
                write!(
                    f,
                    "received Noise message of type {t}, want record ({MSG_TYPE_RECORD})"
                )
            }
            Self::FrameTooLarge(n) => {
                write!(
                    f,
                    "Noise frame of {n} bytes exceeds the maximum of {MAX_FRAME_LEN}"
                )
            }
            Self::FrameTooShort(n) => {
                write!(f, "Noise record of {n} bytes is shorter than its tag")
            }
            Self::Decrypt => write!(f, "Noise record failed authentication"),
            Self::NonceExhausted => write!(f, "Noise cipher exhausted, no nonces left"),
            Self::PlaintextTooLarge(n) => {
                write!(
                    f,
                    "record plaintext of {n} bytes exceeds {MAX_PLAINTEXT_LEN}"
                )
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// The X25519 public key of a private key (keys are clamped by the DH function, as Go does).
pub fn public_key(private: &PrivateKey) -> [u8; 32] {
    private.public().0
}

/// A fresh random private key, clamped as Tailscale stores them.
pub fn generate_private_key() -> PrivateKey {
    PrivateKey::generate()
}

/// The prologue both sides mix in: binds the cleartext version field to the handshake.
pub fn prologue(version: u16) -> String {
    format!("{PROLOGUE_PREFIX}{version}")
}

fn blake2s(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

fn hmac_blake2s(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac::SimpleHmac::<Blake2s256>::new_from_slice(key)
        .expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize_fixed().into()
}

/// Noise's HKDF (RFC 5869 with HMAC-BLAKE2s), producing two outputs.
fn hkdf2(chaining_key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac_blake2s(chaining_key, &[input]);
    let out1 = hmac_blake2s(&prk, &[&[1]]);
    let out2 = hmac_blake2s(&prk, &[&out1, &[2]]);
    (out1, out2)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("key is 32 bytes"))
}

/// The handshake's symmetric state (`h`, `ck`). Every `MixKey` yields a fresh key used for
/// exactly one AEAD operation, so handshake encryption always uses the zero nonce.
struct SymmetricState {
    h: [u8; 32],
    ck: [u8; 32],
}

impl SymmetricState {
    /// Initial state, prologue and the responder's pre-message (`<- s`) mixed in.
    fn new(version: u16, responder_static: &[u8; 32]) -> Self {
        // The protocol name is longer than 32 bytes, so Noise hashes it.
        let h = blake2s(&[PROTOCOL_NAME]);
        let mut s = SymmetricState { h, ck: h };
        s.mix_hash(prologue(version).as_bytes());
        s.mix_hash(responder_static);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = blake2s(&[&self.h, data]);
    }

    /// `MixKey(DH(private, public))`, returning the single-use key.
    fn mix_dh(
        &mut self,
        private: &PrivateKey,
        public: &[u8; 32],
        step: &'static str,
    ) -> Result<[u8; 32], HandshakeError> {
        let shared = StaticSecret::from(*private.expose_secret_bytes())
            .diffie_hellman(&PublicKey::from(*public));
        // Go's curve25519.X25519 refuses an all-zero result; so do we.
        if !shared.was_contributory() {
            return Err(HandshakeError::LowOrderPoint(step));
        }
        let (ck, k) = hkdf2(&self.ck, shared.as_bytes());
        self.ck = ck;
        Ok(k)
    }

    /// Encrypts `plaintext` into `out` (which is `plaintext.len() + TAG_LEN` long) with
    /// `ad = h`, then mixes the ciphertext into `h`.
    fn encrypt_and_hash(&mut self, key: &[u8; 32], plaintext: &[u8], out: &mut [u8]) {
        let (body, tag_out) = out.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let tag = aead_key(key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(self.h),
                body,
            )
            .expect("handshake messages are far below the AEAD size limit");
        tag_out.copy_from_slice(tag.as_ref());
        self.mix_hash(out);
    }

    /// Decrypts `ciphertext` into `out` (`ciphertext.len() - TAG_LEN` long) and mixes the
    /// ciphertext into `h` if and only if it authenticated.
    fn decrypt_and_hash(
        &mut self,
        key: &[u8; 32],
        ciphertext: &[u8],
        out: &mut [u8],
        step: &'static str,
    ) -> Result<(), HandshakeError> {
        let mut buf = ciphertext.to_vec();
        let plain = aead_key(key)
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(self.h),
                &mut buf,
            )
            .map_err(|_| HandshakeError::Decrypt(step))?;
        out.copy_from_slice(plain);
        self.mix_hash(ciphertext);
        Ok(())
    }

    /// `Split()`: the initiator→responder and responder→initiator transport keys.
    fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

/// The transport state of one direction: key and big-endian nonce counter.
struct CipherState {
    key: LessSafeKey,
    counter: u64,
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        CipherState {
            key: aead_key(key),
            counter: 0,
        }
    }

    /// The next nonce: 4 zero bytes, then the counter big-endian (unlike Noise's spec,
    /// which is little-endian — the reason this layer is hand-written).
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.counter == u64::MAX {
            return Err(RecordError::NonceExhausted);
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// Encrypts the outgoing byte stream into records.
pub struct RecordSealer {
    cipher: CipherState,
}

impl fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordSealer")
            .field("counter", &self.cipher.counter)
            .finish()
    }
}

impl RecordSealer {
    fn new(key: &[u8; 32]) -> Self {
        RecordSealer {
            cipher: CipherState::new(key),
        }
    }

    /// Appends one record carrying `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes, may be
    /// empty) to `out`.
    pub fn seal_record(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(RecordError::PlaintextTooLarge(plaintext.len()));
        }
        let nonce = self.cipher.next_nonce()?;
        let start = out.len();
        out.push(MSG_TYPE_RECORD);
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u16).to_be_bytes());
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[start + HEADER_LEN..])
            .expect("record plaintext is below the AEAD size limit");
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Appends records carrying all of `plaintext` to `out`, split at
    /// [`MAX_PLAINTEXT_LEN`]. An empty `plaintext` produces nothing.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for chunk in plaintext.chunks(MAX_PLAINTEXT_LEN) {
            self.seal_record(chunk, out)?;
        }
        Ok(())
    }

    /// The number of records sealed so far (the next nonce counter).
    pub fn records_sealed(&self) -> u64 {
        self.cipher.counter
    }
}

/// Decrypts incoming records.
pub struct RecordOpener {
    cipher: CipherState,
}

impl fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordOpener")
            .field("counter", &self.cipher.counter)
            .finish()
    }
}

impl RecordOpener {
    fn new(key: &[u8; 32]) -> Self {
        RecordOpener {
            cipher: CipherState::new(key),
        }
    }

    /// Looks at buffered bytes and returns the total length of the first frame if it is
    /// complete, `None` if more bytes are needed. Rejects non-record frames and frames
    /// declared larger than [`MAX_FRAME_LEN`] as soon as their header is visible.
    pub fn complete_frame_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            // Judge the type as early as possible: garbage fails on its first byte.
            if let Some(&t) = buf.first() {
                if t != MSG_TYPE_RECORD {
                    return Err(RecordError::UnexpectedMessageType(t));
                }
            }
            return Ok(None);
        };
        if header[0] != MSG_TYPE_RECORD {
            return Err(RecordError::UnexpectedMessageType(header[0]));
        }
        let total = HEADER_LEN + usize::from(u16::from_be_bytes([header[1], header[2]]));
        if total > MAX_FRAME_LEN {
            return Err(RecordError::FrameTooLarge(total));
        }
        Ok((buf.len() >= total).then_some(total))
    }

    /// Decrypts one whole frame (as delimited by [`Self::complete_frame_len`]) in place
    /// and returns the plaintext length; the plaintext is `frame[HEADER_LEN..][..len]`.
    pub fn open_in_place(&mut self, frame: &mut [u8]) -> Result<usize, RecordError> {
        match Self::complete_frame_len(frame)? {
            Some(n) if n == frame.len() => {}
            _ => return Err(RecordError::FrameTooShort(frame.len())),
        }
        if frame.len() < HEADER_LEN + TAG_LEN {
            return Err(RecordError::FrameTooShort(frame.len()));
        }
        let nonce = self.cipher.next_nonce()?;
        let plain = self
            .cipher
            .key
            .open_in_place(nonce, Aad::empty(), &mut frame[HEADER_LEN..])
            .map_err(|_| RecordError::Decrypt)?;
        Ok(plain.len())
    }
}

/// The result of a completed handshake: both directions' record states and who the peer is.
#[derive(Debug)]
pub struct Transport {
    pub sealer: RecordSealer,
    pub opener: RecordOpener,
    /// The final handshake hash, usable for channel binding.
    pub handshake_hash: [u8; 32],
    /// The peer's static key: the server's key for the client, the client's machine key
    /// for the server.
    pub peer_static: [u8; 32],
    /// The protocol version from the initiation header (also in the prologue).
    pub protocol_version: u16,
}

/// What the first 3 bytes the server sends after the upgrade announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerReplyHeader {
    /// A handshake response; [`RESPONSE_LEN`] bytes in total.
    Response,
    /// An error frame whose ASCII text of `len` bytes follows.
    Error { len: usize },
}

/// Classifies the first 3 bytes of the server's reply.
pub fn parse_server_reply_header(
    header: &[u8; HEADER_LEN],
) -> Result<ServerReplyHeader, HandshakeError> {
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    match header[0] {
        MSG_TYPE_RESPONSE if len == RESPONSE_PAYLOAD_LEN => Ok(ServerReplyHeader::Response),
        MSG_TYPE_RESPONSE => Err(HandshakeError::WrongLengthField {
            expected: RESPONSE_PAYLOAD_LEN,
            got: len,
        }),
        MSG_TYPE_ERROR => Ok(ServerReplyHeader::Error { len }),
        t => Err(HandshakeError::UnexpectedMessageType(t)),
    }
}

/// Turns the text of an error frame into the error the client reports. The text is
/// unauthenticated: shown to the user as a hint, never acted upon.
pub fn server_error_text(text: &[u8]) -> HandshakeError {
    let printable: String = String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    HandshakeError::ServerError(printable)
}

/// Builds an error frame (type 3) for refusing a client before the handshake completes.
/// Use fixed strings: the text goes to an unauthenticated peer.
pub fn encode_error_frame(message: &str) -> Vec<u8> {
    let text = &message.as_bytes()[..message.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(HEADER_LEN + text.len());
    out.push(MSG_TYPE_ERROR);
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
    out
}

/// The client side of the handshake between sending the initiation and reading the reply.
pub struct InitiatorHandshake {
    state: SymmetricState,
    machine_private: PrivateKey,
    ephemeral_private: PrivateKey,
    server_public: [u8; 32],
    version: u16,
}

impl fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl InitiatorHandshake {
    /// Starts a handshake with a fresh ephemeral key; returns the state and the initiation
    /// message (sent base64 in `X-Tailscale-Handshake`).
    pub fn start(
        machine_private: &PrivateKey,
        server_public: &[u8; 32],
        version: u16,
    ) -> Result<(Self, [u8; INITIATION_LEN]), HandshakeError> {
        Self::start_with_ephemeral(
            machine_private,
            server_public,
            version,
            &generate_private_key(),
        )
    }

    /// [`Self::start`] with a given ephemeral key (deterministic, for known-answer tests).
    pub fn start_with_ephemeral(
        machine_private: &PrivateKey,
        server_public: &[u8; 32],
        version: u16,
        ephemeral_private: &PrivateKey,
    ) -> Result<(Self, [u8; INITIATION_LEN]), HandshakeError> {
        let mut state = SymmetricState::new(version, server_public);
        let mut msg = [0u8; INITIATION_LEN];
        msg[0..2].copy_from_slice(&version.to_be_bytes());
        msg[2] = MSG_TYPE_INITIATION;
        msg[3..5].copy_from_slice(&(INITIATION_PAYLOAD_LEN as u16).to_be_bytes());
        let (_, body) = msg.split_at_mut(INITIATION_HEADER_LEN);
        let (e_pub, rest) = body.split_at_mut(KEY_LEN);
        let (enc_static, tag) = rest.split_at_mut(KEY_LEN + TAG_LEN);

        // -> e, es, s, ss
        e_pub.copy_from_slice(&public_key(ephemeral_private));
        state.mix_hash(e_pub);
        let k = state.mix_dh(ephemeral_private, server_public, "es")?;
        state.encrypt_and_hash(&k, &public_key(machine_private), enc_static);
        let k = state.mix_dh(machine_private, server_public, "ss")?;
        state.encrypt_and_hash(&k, &[], tag);

        let hs = InitiatorHandshake {
            state,
            machine_private: machine_private.clone(),
            ephemeral_private: ephemeral_private.clone(),
            server_public: *server_public,
            version,
        };
        Ok((hs, msg))
    }

    /// The protocol version this handshake announced.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Finishes the handshake with the server's response message (exactly
    /// [`RESPONSE_LEN`] bytes; classify it first with [`parse_server_reply_header`]).
    pub fn read_response(mut self, response: &[u8]) -> Result<Transport, HandshakeError> {
        if response.len() != RESPONSE_LEN {
            return Err(HandshakeError::WrongSize {
                expected: RESPONSE_LEN,
                got: response.len(),
            });
        }
        let header: &[u8; HEADER_LEN] = response[..HEADER_LEN].try_into().expect("length checked");
        match parse_server_reply_header(header)? {
            ServerReplyHeader::Response => {}
            ServerReplyHeader::Error { .. } => {
                return Err(server_error_text(&response[HEADER_LEN..]))
            }
        }
        let server_ephemeral: [u8; 32] = response[HEADER_LEN..HEADER_LEN + KEY_LEN]
            .try_into()
            .expect("length checked");
        let tag = &response[HEADER_LEN + KEY_LEN..];

        // <- e, ee, se
        self.state.mix_hash(&server_ephemeral);
        self.state
            .mix_dh(&self.ephemeral_private, &server_ephemeral, "ee")?;
        let k = self
            .state
            .mix_dh(&self.machine_private, &server_ephemeral, "se")?;
        self.state
            .decrypt_and_hash(&k, tag, &mut [], "response tag")?;

        let (c2s, s2c) = self.state.split();
        Ok(Transport {
            sealer: RecordSealer::new(&c2s),
            opener: RecordOpener::new(&s2c),
            handshake_hash: self.state.h,
            peer_static: self.server_public,
            protocol_version: self.version,
        })
    }
}

/// The protocol version in an initiation's cleartext header, if it has one. Lets a server
/// refuse versions it does not support before doing any cryptography.
pub fn initiation_version(initiation: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([
        *initiation.first()?,
        *initiation.get(1)?,
    ]))
}

/// The responder's result: the client's proven machine key and the bytes to send back.
#[derive(Debug)]
pub struct Responded {
    /// The response message to write to the client right after `101 Switching Protocols`.
    pub response: [u8; RESPONSE_LEN],
    /// Transport state; `peer_static` is the client's machine public key.
    pub transport: Transport,
}

/// Runs the server side of the handshake on a client's initiation message.
pub fn respond(
    server_private: &PrivateKey,
    initiation: &[u8],
) -> Result<Responded, HandshakeError> {
    respond_with_ephemeral(server_private, initiation, &generate_private_key())
}

/// [`respond`] with a given ephemeral key (deterministic, for known-answer tests).
pub fn respond_with_ephemeral(
    server_private: &PrivateKey,
    initiation: &[u8],
    ephemeral_private: &PrivateKey,
) -> Result<Responded, HandshakeError> {
    if initiation.len() != INITIATION_LEN {
        return Err(HandshakeError::WrongSize {
            expected: INITIATION_LEN,
            got: initiation.len(),
        });
    }
    let version = u16::from_be_bytes([initiation[0], initiation[1]]);
    if initiation[2] != MSG_TYPE_INITIATION {
        return Err(HandshakeError::UnexpectedMessageType(initiation[2]));
    }
    let len = usize::from(u16::from_be_bytes([initiation[3], initiation[4]]));
    if len != INITIATION_PAYLOAD_LEN {
        return Err(HandshakeError::WrongLengthField {
            expected: INITIATION_PAYLOAD_LEN,
            got: len,
        });
    }
    let body = &initiation[INITIATION_HEADER_LEN..];
    let client_ephemeral: [u8; 32] = body[..KEY_LEN].try_into().expect("length checked");
    let enc_static = &body[KEY_LEN..KEY_LEN * 2 + TAG_LEN];
    let tag = &body[KEY_LEN * 2 + TAG_LEN..];

    let server_public = public_key(server_private);
    let mut state = SymmetricState::new(version, &server_public);

    // -> e, es, s, ss
    state.mix_hash(&client_ephemeral);
    let k = state.mix_dh(server_private, &client_ephemeral, "es")?;
    let mut machine_public = [0u8; 32];
    state.decrypt_and_hash(&k, enc_static, &mut machine_public, "machine key")?;
    let k = state.mix_dh(server_private, &machine_public, "ss")?;
    state.decrypt_and_hash(&k, tag, &mut [], "initiation tag")?;

    // <- e, ee, se
    let mut response = [0u8; RESPONSE_LEN];
    response[0] = MSG_TYPE_RESPONSE;
    response[1..3].copy_from_slice(&(RESPONSE_PAYLOAD_LEN as u16).to_be_bytes());
    let e_pub = public_key(ephemeral_private);
    response[HEADER_LEN..HEADER_LEN + KEY_LEN].copy_from_slice(&e_pub);
    state.mix_hash(&e_pub);
    state.mix_dh(ephemeral_private, &client_ephemeral, "ee")?;
    let k = state.mix_dh(ephemeral_private, &machine_public, "se")?;
    state.encrypt_and_hash(&k, &[], &mut response[HEADER_LEN + KEY_LEN..]);

    let (c2s, s2c) = state.split();
    Ok(Responded {
        response,
        transport: Transport {
            sealer: RecordSealer::new(&s2c),
            opener: RecordOpener::new(&c2s),
            handshake_hash: state.h,
            peer_static: machine_public,
            protocol_version: version,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> PrivateKey {
        let mut k = [b; 32];
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        PrivateKey::from_bytes(k)
    }

    fn handshake() -> (Transport, Transport) {
        let machine = generate_private_key();
        let server = generate_private_key();
        let (hs, init) = InitiatorHandshake::start(&machine, &public_key(&server), 113).unwrap();
        let responded = respond(&server, &init).unwrap();
        let client = hs.read_response(&responded.response).unwrap();
        (client, responded.transport)
    }

    /// Reads every complete record out of `wire` with `opener`, concatenating plaintext.
    fn open_all(opener: &mut RecordOpener, wire: &mut [u8]) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let n = RecordOpener::complete_frame_len(&wire[pos..])?.expect("whole frame");
            let plen = opener.open_in_place(&mut wire[pos..pos + n])?;
            out.extend_from_slice(&wire[pos + HEADER_LEN..][..plen]);
            pos += n;
        }
        Ok(out)
    }

    #[test]
    fn initiator_and_responder_agree() {
        let machine = generate_private_key();
        let server = generate_private_key();
        let (hs, init) = InitiatorHandshake::start(&machine, &public_key(&server), 130).unwrap();
        assert_eq!(init.len(), 101);
        assert_eq!(&init[..5], &[0x00, 0x82, 0x01, 0x00, 0x60]);
        assert_eq!(initiation_version(&init), Some(130));

        let responded = respond(&server, &init).unwrap();
        assert_eq!(responded.transport.peer_static, public_key(&machine));
        assert_eq!(responded.transport.protocol_version, 130);
        assert_eq!(&responded.response[..3], &[0x02, 0x00, 0x30]);

        let mut client = hs.read_response(&responded.response).unwrap();
        let mut server_t = responded.transport;
        assert_eq!(client.peer_static, public_key(&server));
        assert_eq!(client.handshake_hash, server_t.handshake_hash);

        // Both directions carry data.
        let mut wire = Vec::new();
        client.sealer.seal(b"hello server", &mut wire).unwrap();
        assert_eq!(
            open_all(&mut server_t.opener, &mut wire).unwrap(),
            b"hello server"
        );
        let mut wire = Vec::new();
        server_t.sealer.seal(b"hello client", &mut wire).unwrap();
        assert_eq!(
            open_all(&mut client.opener, &mut wire).unwrap(),
            b"hello client"
        );
    }

    #[test]
    fn wrong_server_key_fails_the_handshake() {
        let machine = generate_private_key();
        let server = generate_private_key();
        let other = generate_private_key();
        // The client believes the server key is `other`'s.
        let (_hs, init) = InitiatorHandshake::start(&machine, &public_key(&other), 113).unwrap();
        assert_eq!(
            respond(&server, &init).unwrap_err(),
            HandshakeError::Decrypt("machine key")
        );
    }

    #[test]
    fn version_mismatch_fails_the_handshake() {
        // The prologue binds the cleartext version: a middlebox rewriting it breaks the
        // handshake instead of silently downgrading.
        let machine = generate_private_key();
        let server = generate_private_key();
        let (_hs, mut init) =
            InitiatorHandshake::start(&machine, &public_key(&server), 130).unwrap();
        init[1] = 113;
        assert!(matches!(
            respond(&server, &init),
            Err(HandshakeError::Decrypt(_))
        ));
    }

    #[test]
    fn tampered_response_is_rejected() {
        let machine = generate_private_key();
        let server = generate_private_key();
        let (hs, init) = InitiatorHandshake::start(&machine, &public_key(&server), 113).unwrap();
        let mut resp = respond(&server, &init).unwrap().response;
        resp[RESPONSE_LEN - 1] ^= 1;
        assert_eq!(
            hs.read_response(&resp).unwrap_err(),
            HandshakeError::Decrypt("response tag")
        );
    }

    #[test]
    fn malformed_initiations_are_rejected_without_panic() {
        let server = generate_private_key();
        let (_hs, init) = InitiatorHandshake::start(&key(1), &public_key(&server), 113).unwrap();
        assert!(matches!(
            respond(&server, &init[..100]),
            Err(HandshakeError::WrongSize { .. })
        ));
        assert!(matches!(
            respond(&server, &[]),
            Err(HandshakeError::WrongSize { .. })
        ));
        let mut bad = init;
        bad[2] = 4;
        assert_eq!(
            respond(&server, &bad).unwrap_err(),
            HandshakeError::UnexpectedMessageType(4)
        );
        let mut bad = init;
        bad[4] = 95;
        assert!(matches!(
            respond(&server, &bad),
            Err(HandshakeError::WrongLengthField { .. })
        ));
        // An all-zero ephemeral key is a low-order point.
        let mut bad = init;
        bad[5..37].fill(0);
        assert_eq!(
            respond(&server, &bad).unwrap_err(),
            HandshakeError::LowOrderPoint("es")
        );
        // Random garbage of the right size.
        let mut garbage = [0x5au8; INITIATION_LEN];
        garbage[2] = 1;
        garbage[3..5].copy_from_slice(&96u16.to_be_bytes());
        assert!(matches!(
            respond(&server, &garbage),
            Err(HandshakeError::Decrypt(_))
        ));
    }

    #[test]
    fn server_reply_header_classification() {
        assert_eq!(
            parse_server_reply_header(&[2, 0, 48]),
            Ok(ServerReplyHeader::Response)
        );
        assert_eq!(
            parse_server_reply_header(&[3, 0, 5]),
            Ok(ServerReplyHeader::Error { len: 5 })
        );
        assert!(matches!(
            parse_server_reply_header(&[2, 0, 47]),
            Err(HandshakeError::WrongLengthField { .. })
        ));
        assert_eq!(
            parse_server_reply_header(b"HTT"),
            Err(HandshakeError::UnexpectedMessageType(b'H'))
        );
        let frame = encode_error_frame("unsupported\nversion");
        assert_eq!(&frame[..3], &[3, 0, 19]);
        assert_eq!(
            server_error_text(&frame[3..]),
            HandshakeError::ServerError("unsupported?version".into())
        );
    }

    #[test]
    fn records_split_at_max_plaintext_and_respect_max_frame() {
        let (mut client, mut server) = handshake();
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        client.sealer.seal(&data, &mut wire).unwrap();
        // 10000 = 4077 + 4077 + 1846: three records, the first two exactly the maximum.
        assert_eq!(client.sealer.records_sealed(), 3);
        assert_eq!(
            RecordOpener::complete_frame_len(&wire).unwrap(),
            Some(MAX_FRAME_LEN)
        );
        assert_eq!(wire.len(), 2 * MAX_FRAME_LEN + HEADER_LEN + 1846 + TAG_LEN);
        assert_eq!(open_all(&mut server.opener, &mut wire).unwrap(), data);

        assert_eq!(
            client
                .sealer
                .seal_record(&data[..MAX_PLAINTEXT_LEN + 1], &mut Vec::new()),
            Err(RecordError::PlaintextTooLarge(MAX_PLAINTEXT_LEN + 1))
        );
    }

    #[test]
    fn empty_records_are_legal() {
        let (mut client, mut server) = handshake();
        let mut wire = Vec::new();
        client.sealer.seal_record(&[], &mut wire).unwrap();
        client.sealer.seal_record(b"x", &mut wire).unwrap();
        assert_eq!(wire.len(), 2 * (HEADER_LEN + TAG_LEN) + 1);
        assert_eq!(open_all(&mut server.opener, &mut wire).unwrap(), b"x");
    }

    #[test]
    fn frame_header_checks() {
        assert_eq!(RecordOpener::complete_frame_len(&[]), Ok(None));
        assert_eq!(RecordOpener::complete_frame_len(&[4, 0]), Ok(None));
        assert_eq!(
            RecordOpener::complete_frame_len(&[4, 0, 20, 1, 2]),
            Ok(None)
        );
        assert_eq!(
            RecordOpener::complete_frame_len(b"G"),
            Err(RecordError::UnexpectedMessageType(b'G'))
        );
        // Declared 4094 bytes of ciphertext: one byte over the maximum frame.
        assert_eq!(
            RecordOpener::complete_frame_len(&[4, 0x0f, 0xfe]),
            Err(RecordError::FrameTooLarge(4097))
        );
        assert_eq!(RecordOpener::complete_frame_len(&[4, 0x0f, 0xfd]), Ok(None));
    }

    #[test]
    fn replayed_reordered_and_corrupted_records_are_rejected() {
        let (mut client, mut server) = handshake();
        let mut first = Vec::new();
        client.sealer.seal(b"one", &mut first).unwrap();
        let mut second = Vec::new();
        client.sealer.seal(b"two", &mut second).unwrap();

        // Reordered: the second record arrives first; its nonce does not match.
        let mut s2 = second.clone();
        assert_eq!(
            server.opener.open_in_place(&mut s2),
            Err(RecordError::Decrypt)
        );

        let (mut client, mut server) = handshake();
        let mut first = {
            let mut w = Vec::new();
            client.sealer.seal(b"one", &mut w).unwrap();
            w
        };
        let replay = first.clone();
        assert_eq!(open_all(&mut server.opener, &mut first).unwrap(), b"one");
        // Replayed: the same record again fails (nonce counter moved on).
        let mut r = replay.clone();
        assert_eq!(
            server.opener.open_in_place(&mut r),
            Err(RecordError::Decrypt)
        );

        let (mut client, mut server) = handshake();
        let mut w = Vec::new();
        client.sealer.seal(b"payload", &mut w).unwrap();
        w[HEADER_LEN] ^= 0x80;
        assert_eq!(
            server.opener.open_in_place(&mut w),
            Err(RecordError::Decrypt)
        );
        // A frame shorter than its tag.
        assert_eq!(
            server.opener.open_in_place(&mut [4, 0, 3, 1, 2, 3]),
            Err(RecordError::FrameTooShort(6))
        );
    }

    #[test]
    fn nonce_counter_exhausts() {
        let (mut client, mut server) = handshake();
        client.sealer.cipher.counter = u64::MAX - 1;
        server.opener.cipher.counter = u64::MAX - 1;
        let mut w = Vec::new();
        client.sealer.seal(b"last", &mut w).unwrap();
        let mut copy = w.clone();
        assert_eq!(open_all(&mut server.opener, &mut w).unwrap(), b"last");
        // Counter 2^64-1 is never used: both sides refuse instead of wrapping around.
        assert_eq!(
            client.sealer.seal(b"more", &mut Vec::new()),
            Err(RecordError::NonceExhausted)
        );
        assert_eq!(
            server.opener.open_in_place(&mut copy),
            Err(RecordError::NonceExhausted)
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Known-answer vectors from an independent Python implementation written from the
    /// Noise spec (control/tests/ts2021_vectors.py, hashlib + `cryptography`). The second
    /// record of each direction has counter 1, which a little-endian nonce would get wrong.
    #[test]
    fn known_answer() {
        let machine = PrivateKey::from_bytes([0x11; 32]);
        let server = PrivateKey::from_bytes([0x22; 32]);
        let (hs, init) = InitiatorHandshake::start_with_ephemeral(
            &machine,
            &public_key(&server),
            113,
            &PrivateKey::from_bytes([0x33; 32]),
        )
        .unwrap();
        assert_eq!(
            init.to_vec(),
            hex("00710100607b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b1461d2949213e755bc180b5d5dbbd8c50a2a1beb69f8940d24cab4606a34cd5d416d033ea7c15693e1505353a2df249df06460648a56e94458fb005a34667b5c6d")
        );
        let responded =
            respond_with_ephemeral(&server, &init, &PrivateKey::from_bytes([0x44; 32])).unwrap();
        assert_eq!(
            responded.response.to_vec(),
            hex("020030ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6bfc0f7e1d5c39549d3416f71da913672d")
        );
        let mut client = hs.read_response(&responded.response).unwrap();
        let mut server_t = responded.transport;
        let hash = hex("e1bbad05c65bb5079fb93a1f75dbc8e7393060fc677d71a582ef9d2266446be1");
        assert_eq!(client.handshake_hash.to_vec(), hash);
        assert_eq!(server_t.handshake_hash.to_vec(), hash);

        let mut w = Vec::new();
        client.sealer.seal(b"client hello", &mut w).unwrap();
        assert_eq!(
            w,
            hex("04001c86b7cdfe76817a1f25ae9c1056d6264ac41d807736c0003e8dbd43e9")
        );
        let mut w2 = Vec::new();
        client.sealer.seal(b"second", &mut w2).unwrap();
        assert_eq!(
            w2,
            hex("0400168134e1a2a6292b31af2c25694f386defc23a9f8ed589")
        );
        w.extend_from_slice(&w2);
        assert_eq!(
            open_all(&mut server_t.opener, &mut w).unwrap(),
            b"client hellosecond"
        );

        let mut w = Vec::new();
        server_t.sealer.seal(b"server hello", &mut w).unwrap();
        server_t.sealer.seal_record(&[], &mut w).unwrap();
        assert_eq!(
            w,
            hex("04001c17d9f85ebf0e190de0f69af5c3d68c68bf0e06fe3d139e0a8cd9e8ba0400100a1f53632c4ce48e964ea12e3f08106b")
        );
        assert_eq!(
            open_all(&mut client.opener, &mut w).unwrap(),
            b"server hello"
        );
    }
}
