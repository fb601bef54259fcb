//! Accept the `:authority` that real gRPC clients send over a unix socket.
//!
//! A unix socket has no host name, so each client makes one up for HTTP/2's `:authority`:
//! grpc-go and grpcurl send `localhost`, tonic whatever its endpoint URI says, grpcio (Python,
//! C++, Ruby; since 1.57) the socket path percent-encoded (`%2Frun%2Fagent-supervisor%2Fapi.sock`)
//! and grpc-java the bare path. h2, under tonic, parses `:authority` as a URI authority when it
//! builds the request and resets the stream (`RST_STREAM`, PROTOCOL_ERROR) when it is not one,
//! before any tower layer or service sees the request; h2 has no setting to relax that.
//!
//! So the API socket's connections are wrapped in [`AuthorityFix`], which rewrites the client's
//! header blocks before h2 reads them: each HEADERS frame and its CONTINUATIONs is HPACK-decoded
//! (with a decoder that follows the client's dynamic table), an `:authority` that is not a URI
//! authority becomes [`UNIX_AUTHORITY`], and the block is re-encoded as literals that are not
//! indexed, so h2's decoder never uses its dynamic table and stays in step with the client
//! whatever the client indexed. Every other frame, and all the server writes, pass unchanged.
//!
//! The authority is not used for anything: requests are routed by path, and callers are
//! identified by SO_PEERCRED and tokens (auth.rs) exactly as before; the wrapper hands tonic the
//! inner socket's connection info. A client whose frames can't be parsed (a broken header block,
//! a CONTINUATION out of place, a header block over [`MAX_BLOCK`]) loses its connection.
//! Over TCP the daemon speaks TLS, where clients send their target's `host:port`, a valid
//! authority; this wrapper is for the unix socket only.
//!
//! References: RFC 9113 §4 (frames), §6.2 (HEADERS), §6.10 (CONTINUATION), §8.3.1 (`:authority`);
//! RFC 7541 (HPACK).
#![forbid(unsafe_code)]

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a unix socket client's `:authority` becomes when it is not a URI authority (what
/// grpc-go and grpcurl send on their own).
pub const UNIX_AUTHORITY: &str = "localhost";

/// The largest header block held, encoded or decoded (name + value + 32 per field, as HPACK
/// counts): the server refuses header lists over 16 KiB anyway (hyper's default).
pub const MAX_BLOCK: usize = 64 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames we write are at most this long: every endpoint accepts it (the smallest allowed
/// SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// The HPACK dynamic table size the server allows the client (it advertises none, so the
/// protocol's default).
const HEADER_TABLE_SIZE: usize = 4096;

/// Why a client's connection was ended.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("HTTP/2 header block of stream {stream}: {source}")]
    Hpack {
        stream: u32,
        source: loona_hpack::decoder::DecoderError,
    },
    #[error("HTTP/2 header block of stream {stream} is over {MAX_BLOCK} bytes")]
    TooLarge { stream: u32 },
    #[error("HTTP/2 framing: {0}")]
    Framing(&'static str),
}

/// A header block waiting for its CONTINUATION frames.
struct Block {
    stream: u32,
    /// The HEADERS frame's END_STREAM and PRIORITY flags.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

enum State {
    /// Collecting the client's connection preface.
    Preface,
    /// Collecting a frame header.
    FrameHeader,
    /// Collecting a HEADERS or CONTINUATION frame's payload of this length.
    HeaderPayload {
        header: [u8; FRAME_HEADER],
        len: usize,
    },
    /// Passing this many bytes of another frame's payload through.
    Forward(usize),
    /// Not HTTP/2 (h2 refuses it on its own): everything passes.
    Transparent,
}

/// The client-to-server byte stream's rewriter, free of I/O: bytes in, bytes out.
pub struct Rewriter {
    state: State,
    /// The preface, frame header or header payload being collected.
    buf: Vec<u8>,
    block: Option<Block>,
    /// Follows the client's HPACK encoder (its dynamic table).
    decoder: loona_hpack::Decoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface,
            buf: Vec::new(),
            block: None,
            decoder,
        }
    }
}

impl Rewriter {
    /// Take the next bytes the client sent; append what the server is to read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            match self.state {
                State::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Forward(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        State::FrameHeader
                    } else {
                        State::Forward(left - n)
                    };
                }
                State::Preface => {
                    input = self.collect(input, PREFACE.len());
                    if !PREFACE.starts_with(&self.buf) {
                        out.append(&mut self.buf);
                        self.state = State::Transparent;
                    } else if self.buf.len() == PREFACE.len() {
                        out.append(&mut self.buf);
                        self.state = State::FrameHeader;
                    }
                }
                State::FrameHeader => {
                    input = self.collect(input, FRAME_HEADER);
                    if self.buf.len() == FRAME_HEADER {
                        let mut header = [0; FRAME_HEADER];
                        header.copy_from_slice(&self.buf);
                        self.buf.clear();
                        self.frame_header(header, out)?;
                    }
                }
                State::HeaderPayload { header, len } => {
                    input = self.collect(input, len);
                    if self.buf.len() == len {
                        self.state = State::FrameHeader;
                        let payload = std::mem::take(&mut self.buf);
                        self.header_frame(header, &payload, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Move bytes from `input` into `buf` until it holds `want`; the rest of `input`.
    fn collect<'a>(&mut self, input: &'a [u8], want: usize) -> &'a [u8] {
        let n = want.saturating_sub(self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..n]);
        &input[n..]
    }

    fn frame_header(
        &mut self,
        header: [u8; FRAME_HEADER],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let kind = header[3];
        if kind == HEADERS || kind == CONTINUATION {
            if len > MAX_BLOCK {
                return Err(RewriteError::TooLarge {
                    stream: stream_id(&header),
                });
            }
            self.state = State::HeaderPayload { header, len };
            if len == 0 {
                self.state = State::FrameHeader;
                self.header_frame(header, &[], out)?;
            }
            return Ok(());
        }
        if self.block.is_some() {
            return Err(RewriteError::Framing(
                "a frame other than CONTINUATION inside a header block",
            ));
        }
        out.extend_from_slice(&header);
        self.state = if len == 0 {
            State::FrameHeader
        } else {
            State::Forward(len)
        };
        Ok(())
    }

    /// A whole HEADERS or CONTINUATION frame.
    fn header_frame(
        &mut self,
        header: [u8; FRAME_HEADER],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let (kind, flags, stream) = (header[3], header[4], stream_id(&header));
        if kind == HEADERS {
            if self.block.is_some() {
                return Err(RewriteError::Framing(
                    "a HEADERS frame inside another header block",
                ));
            }
            let mut rest = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let (&p, r) = rest.split_first().ok_or(RewriteError::Framing(
                    "PADDED HEADERS frame without its pad length",
                ))?;
                pad = usize::from(p);
                rest = r;
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (p, r) = rest
                    .split_first_chunk::<5>()
                    .ok_or(RewriteError::Framing("PRIORITY HEADERS frame too short"))?;
                priority = Some(*p);
                rest = r;
            }
            let end = rest.len().checked_sub(pad).ok_or(RewriteError::Framing(
                "HEADERS padding longer than the frame",
            ))?;
            self.block = Some(Block {
                stream,
                flags: flags & (END_STREAM | PRIORITY),
                priority,
                fragment: rest[..end].to_vec(),
            });
        } else {
            let block =
                self.block
                    .as_mut()
                    .filter(|b| b.stream == stream)
                    .ok_or(RewriteError::Framing(
                        "a CONTINUATION frame that continues no header block of its stream",
                    ))?;
            if block.fragment.len() + payload.len() > MAX_BLOCK {
                return Err(RewriteError::TooLarge { stream });
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & END_HEADERS != 0 {
            let block = self
                .block
                .take()
                .expect("a header block was just started or continued");
            self.write_block(&block, out)?;
        }
        Ok(())
    }

    /// Decode a complete header block, fix its `:authority`, write it as HEADERS (and
    /// CONTINUATION) frames of literals.
    fn write_block(&mut self, block: &Block, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let mut decoded_size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                decoded_size += name.len() + value.len() + 32;
                if decoded_size > MAX_BLOCK {
                    return;
                }
                let value: &[u8] = if &*name == b":authority" && !is_authority(&value) {
                    UNIX_AUTHORITY.as_bytes()
                } else {
                    &value
                };
                encode_literal(&name, value, &mut encoded);
            })
            .map_err(|source| RewriteError::Hpack {
                stream: block.stream,
                source,
            })?;
        if decoded_size > MAX_BLOCK {
            return Err(RewriteError::TooLarge {
                stream: block.stream,
            });
        }
        let mut first = Vec::with_capacity(5);
        if let Some(p) = block.priority {
            first.extend_from_slice(&p);
        }
        let room = MAX_FRAME - first.len();
        let (head, mut rest) = encoded.split_at(room.min(encoded.len()));
        first.extend_from_slice(head);
        let flags = block.flags | if rest.is_empty() { END_HEADERS } else { 0 };
        write_frame(HEADERS, flags, block.stream, &first, out);
        while !rest.is_empty() {
            let (chunk, r) = rest.split_at(MAX_FRAME.min(rest.len()));
            rest = r;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            write_frame(CONTINUATION, flags, block.stream, chunk, out);
        }
        Ok(())
    }
}

fn stream_id(header: &[u8; FRAME_HEADER]) -> u32 {
    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff
}

/// Whether h2 takes `value` as an `:authority`.
fn is_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

fn write_frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frames are at most MAX_FRAME long");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A header field as an HPACK literal with a literal name, not indexed (never indexed for
/// credentials, as the client most likely sent them), no Huffman coding (RFC 7541 §6.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let never = matches!(name, b"authorization" | b"cookie" | b"proxy-authorization");
    out.push(if never { 0x10 } else { 0x00 });
    encode_string(name, out);
    encode_string(value, out);
}

/// An HPACK string literal: a 7-bit-prefix length, then the raw octets (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    let mut len = s.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

/// An accepted unix socket connection whose client header blocks go through a [`Rewriter`];
/// writes, and the connection info tonic gives the services (SO_PEERCRED), are the inner
/// socket's.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet read by the server, from `pos` on.
    out: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            pos: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream (a header block cut short: h2 sees the connection end).
                return Poll::Ready(Ok(()));
            }
            this.rewriter
                .feed(read.filled(), &mut this.out)
                .map_err(|e| {
                    tracing::debug!("closing an API connection: {e}");
                    io::Error::new(io::ErrorKind::InvalidData, e)
                })?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(kind, flags, stream, payload, &mut out);
        out
    }

    /// Split rewritten bytes into (kind, flags, stream, payload) frames, after the preface.
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(b.starts_with(PREFACE));
        b = &b[PREFACE.len()..];
        let mut v = Vec::new();
        while !b.is_empty() {
            let h: [u8; 9] = b[..9].try_into().unwrap();
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            v.push((h[3], h[4], stream_id(&h), b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    fn request(authority: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/grpc.health.v1.Health/Check".to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"te", b"trailers".to_vec()),
            (b"authorization", b"Bearer t".to_vec()),
        ]
    }

    /// The rewritten bytes fed one byte at a time and all at once give the same output.
    fn rewrite(input: &[u8]) -> Vec<u8> {
        let mut whole = Vec::new();
        Rewriter::default().feed(input, &mut whole).unwrap();
        let mut bytewise = Vec::new();
        let mut r = Rewriter::default();
        for b in input {
            r.feed(std::slice::from_ref(b), &mut bytewise).unwrap();
        }
        assert_eq!(whole, bytewise);
        whole
    }

    fn decode_all(fs: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        // A fresh decoder (h2's), which must never need a dynamic table entry.
        let mut d = loona_hpack::Decoder::new();
        d.set_max_table_size(0);
        let mut blocks = Vec::new();
        let mut cur = Vec::new();
        for (kind, flags, _, p) in fs {
            if *kind == HEADERS || *kind == CONTINUATION {
                cur.extend_from_slice(p);
                if flags & END_HEADERS != 0 {
                    blocks.push(d.decode(&std::mem::take(&mut cur)).unwrap());
                }
            }
        }
        blocks
    }

    fn value<'a>(block: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> &'a [u8] {
        &block.iter().find(|(n, _)| n == name.as_bytes()).unwrap().1
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost_and_indexed_fields_stay_in_step() {
        // The client indexes everything (as grpcio does): the second request refers to
        // its dynamic table.
        let mut enc = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        for (stream, authority) in [
            (1, "%2Frun%2Fapi.sock"),
            (3, "%2Frun%2Fapi.sock"),
            (5, "tonic:80"),
        ] {
            let h = request(authority);
            let block = enc.encode(h.iter().map(|(n, v)| (*n, v.as_slice())));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0])); // DATA
        }
        let fs = frames(&rewrite(&input));
        assert_eq!(fs[0], (0x4, 0, 0, vec![]));
        assert_eq!(fs[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        let blocks = decode_all(&fs);
        assert_eq!(blocks.len(), 3);
        for (b, want) in blocks.iter().zip(["localhost", "localhost", "tonic:80"]) {
            assert_eq!(value(b, ":authority"), want.as_bytes());
            assert_eq!(value(b, ":path"), b"/grpc.health.v1.Health/Check");
            assert_eq!(value(b, "authorization"), b"Bearer t");
            assert_eq!(b.len(), 6);
        }
    }

    #[test]
    fn paths_and_empty_or_unix_uris_are_not_authorities_host_names_are() {
        for bad in [
            "/run/api.sock",
            "unix:/run/api.sock",
            "%2Frun%2Fapi.sock",
            "",
            "a b",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
        for good in [
            "localhost",
            "daemon.invalid",
            "127.0.0.1:7443",
            "[::1]:80",
            "tonic",
        ] {
            assert!(is_authority(good.as_bytes()), "{good}");
        }
    }

    #[test]
    fn padding_priority_and_continuations_are_understood_and_big_blocks_are_split() {
        let mut enc = loona_hpack::Encoder::new();
        let mut h = request("/run/api.sock");
        let big = vec![b'x'; 20_000];
        h.push((b"x-big", big.clone()));
        let block = enc.encode(h.iter().map(|(n, v)| (*n, v.as_slice())));
        let (a, b) = block.split_at(100);
        let mut first = vec![3]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 7]); // priority: stream 0, weight 7
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 1, &first));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let fs = frames(&rewrite(&input));
        assert_eq!(fs.len(), 2, "HEADERS and one CONTINUATION");
        assert_eq!(fs[0].0, HEADERS);
        assert_eq!(fs[0].1, PRIORITY | END_STREAM);
        assert_eq!(&fs[0].3[..5], &[0, 0, 0, 0, 7]);
        assert!(fs[0].3.len() <= MAX_FRAME);
        assert_eq!((fs[1].0, fs[1].1), (CONTINUATION, END_HEADERS));
        let mut d = loona_hpack::Decoder::new();
        let mut all = fs[0].3[5..].to_vec();
        all.extend_from_slice(&fs[1].3);
        let decoded = d.decode(&all).unwrap();
        assert_eq!(value(&decoded, ":authority"), b"localhost");
        assert_eq!(value(&decoded, "x-big"), big.as_slice());
    }

    #[test]
    fn something_that_is_not_http2_passes_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n";
        let mut out = Vec::new();
        Rewriter::default().feed(input, &mut out).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn broken_framing_and_oversized_or_bomb_blocks_end_the_connection() {
        let feed = |frames: &[Vec<u8>]| {
            let mut input = PREFACE.to_vec();
            frames.iter().for_each(|f| input.extend(f));
            Rewriter::default().feed(&input, &mut Vec::new())
        };
        // A CONTINUATION out of place, a DATA frame inside a header block.
        assert!(feed(&[frame(CONTINUATION, END_HEADERS, 1, &[0x82])]).is_err());
        assert!(feed(&[frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, &[])]).is_err());
        // Padding longer than the frame; an index beyond both tables.
        assert!(feed(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82])]).is_err());
        assert!(feed(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])]).is_err());
        // A block that decodes to far more than it is long (one 4 KB entry, indexed 200 times).
        let mut enc = loona_hpack::Encoder::new();
        let v = vec![b'v'; 4000];
        let mut block = enc.encode([(&b"x-a"[..], &v[..])]);
        block.extend(std::iter::repeat_n(0xbe, 200)); // index 62: the first dynamic entry
        assert!(matches!(
            feed(&[frame(HEADERS, END_HEADERS, 1, &block)]),
            Err(RewriteError::TooLarge { stream: 1 })
        ));
        // Endless CONTINUATIONs.
        let mut fs = vec![frame(HEADERS, 0, 1, &[])];
        fs.extend((0..5).map(|_| frame(CONTINUATION, 0, 1, &[0; 16_000])));
        assert!(matches!(
            feed(&fs),
            Err(RewriteError::TooLarge { stream: 1 })
        ));
    }
}
