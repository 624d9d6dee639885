//! The codec's behaviour at the edges a hostile or sloppy peer can reach.

use super::*;

fn request(raw: &[u8]) -> Result<RequestHead, Error> {
    RequestHead::parse(raw)
}

fn response(raw: &[u8]) -> Result<ResponseHead, Error> {
    ResponseHead::parse(raw)
}

/// A whole chunked body through a fresh decoder.
fn dechunk(body: &[u8]) -> Result<(Vec<u8>, usize, bool), Error> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let used = d.decode(body, &mut out)?;
    Ok((out, used, d.is_done()))
}

#[test]
fn parses_the_ts2021_upgrade_request() {
    let raw =
        b"POST /ts2021 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUpgrade: tailscale-control-protocol\r\n\
Connection: upgrade\r\nX-Tailscale-Handshake: AAAA\r\n\r\nleftover";
    let end = head_len(raw).unwrap().unwrap();
    assert_eq!(&raw[end..], b"leftover");
    let head = request(&raw[..end]).unwrap();
    assert_eq!(head.method, "POST");
    assert_eq!(head.path(), "/ts2021");
    assert_eq!(head.minor_version, 1);
    assert_eq!(head.authority, None);
    assert_eq!(head.host(), Some("10.0.0.1:8080"));
    assert_eq!(head.headers.get("x-tailscale-handshake"), Some("AAAA"));
    assert!(head.headers.has_token("connection", "Upgrade"));
    assert_eq!(head.body_length(), Ok(BodyLength::Fixed(0)));
}

#[test]
fn query_parameters_are_raw() {
    let head = request(b"GET /key?v=130&x&e=a%20b HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.path(), "/key");
    assert_eq!(head.query(), "v=130&x&e=a%20b");
    assert_eq!(head.query_param("v"), Some("130"));
    assert_eq!(head.query_param("x"), Some(""));
    assert_eq!(head.query_param("e"), Some("a%20b"));
    assert_eq!(head.query_param("y"), None);
}

#[test]
fn absolute_form_targets_become_path_and_query_like_go() {
    let head = request(
        b"GET http://100.64.0.1:5252/dns-query?dns=AAABAAAB HTTP/1.1\r\nHost: elsewhere\r\n\r\n",
    )
    .unwrap();
    assert_eq!(head.target, "/dns-query?dns=AAABAAAB");
    assert_eq!(head.path(), "/dns-query");
    assert_eq!(head.query_param("dns"), Some("AAABAAAB"));
    assert_eq!(head.authority.as_deref(), Some("100.64.0.1:5252"));
    // Go's server: the absolute target's host wins over the Host header.
    assert_eq!(head.host(), Some("100.64.0.1:5252"));

    let head = request(b"GET HTTPS://[fd7a:115c:a1e0::1]:80?x=1 HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(head.target, "/?x=1");
    assert_eq!(head.authority.as_deref(), Some("[fd7a:115c:a1e0::1]:80"));
    assert_eq!(
        request(b"GET http://peer HTTP/1.0\r\n\r\n").unwrap().target,
        "/"
    );

    for bad in [
        &b"GET * HTTP/1.1\r\n\r\n"[..],
        b"CONNECT peer:443 HTTP/1.1\r\n\r\n",
        b"GET ftp://peer/x HTTP/1.1\r\n\r\n",
        b"GET http:///x HTTP/1.1\r\n\r\n",
        b"GET http://user@peer/x HTTP/1.1\r\n\r\n",
        b"GET dns-query HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            request(bad),
            Err(Error::BadRequestTarget),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn malformed_start_lines_are_refused() {
    for bad in [
        &b"\x16\x03\x01\x02\x00\x01\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /key HTTP/1.1 extra\r\n\r\n",
        b"GET  /key HTTP/1.1\r\n\r\n",
        b"GET /key SPDY/3\r\n\r\n",
        b"GET /key HTTP/2.0\r\n\r\n",
        b"GET /key HTTP/1.10\r\n\r\n",
        b"G(T /key HTTP/1.1\r\n\r\n",
        b"GET /k\x01y HTTP/1.1\r\n\r\n",
        b"GET /k\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        assert!(request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    assert!(response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    assert!(response(b"HTTP/1.1 999 Nope\r\n\r\n").is_err());
    assert!(response(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    assert!(response(b"HTTP/1.1 200 O\x00K\r\n\r\n").is_err());
    assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    // Reason phrases are free, even absent.
    assert_eq!(response(b"HTTP/1.1 200\r\n\r\n").unwrap().status, 200);
    assert_eq!(response(b"HTTP/1.0 299 \r\n\r\n").unwrap().status, 299);
}

#[test]
fn malformed_header_lines_are_refused() {
    for (bad, why) in [
        (
            &b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"[..],
            Error::BadHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            Error::BadHeaderName,
        ),
        // RFC 9112 §5.1: whitespace between name and colon must be rejected.
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", Error::BadHeaderName),
        (
            b"GET / HTTP/1.1\r\nX-A\x00: x\r\n\r\n",
            Error::BadHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            Error::BadHeaderValue,
        ),
        (
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
            Error::BadHeaderValue,
        ),
        (
            b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n",
            Error::BadHeaderValue,
        ),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", Error::BareLineEnding),
    ] {
        assert_eq!(request(bad), Err(why), "{}", String::from_utf8_lossy(bad));
    }
    // OWS around values goes; inner whitespace and UTF-8 stay.
    let head = request("GET / HTTP/1.1\r\nX: \t a  b é \t\r\n\r\n".as_bytes()).unwrap();
    assert_eq!(head.headers.get("x"), Some("a  b é"));
}

#[test]
fn obs_fold_is_refused() {
    for raw in [
        &b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n",
        // Whitespace between the start line and the first header (RFC 9112 §2.2).
        b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    ] {
        assert_eq!(request(raw), Err(Error::ObsFold));
    }
    assert_eq!(
        response(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"),
        Err(Error::ObsFold)
    );
}

#[test]
fn bare_lf_in_the_head_is_refused_as_soon_as_it_arrives() {
    for raw in [
        &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\n",
        b"GET / HTTP/1.1\n\n",
        b"\n",
    ] {
        let lf = (0..raw.len())
            .find(|&i| raw[i] == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
            .unwrap();
        // Nothing wrong yet before the LF; refused with it, without waiting for more.
        assert_eq!(head_len(&raw[..lf]), Ok(None));
        assert_eq!(head_len(&raw[..=lf]), Err(Error::BareLineEnding));
        assert_eq!(request(raw), Err(Error::BareLineEnding));
    }
}

#[test]
fn header_count_and_head_size_are_bounded() {
    let with_headers = |n: usize| {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            raw.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    };
    assert_eq!(
        request(&with_headers(MAX_HEADERS)).unwrap().headers.0.len(),
        MAX_HEADERS
    );
    assert_eq!(
        request(&with_headers(MAX_HEADERS + 1)),
        Err(Error::TooManyHeaders)
    );
    assert_eq!(Error::TooManyHeaders.status(), 431);

    // A head of exactly the bound is fine; one byte more is refused, and so is the
    // bound's worth of bytes that has not ended yet (no waiting for the rest).
    let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
    raw.resize(MAX_HEAD_LEN - 4, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head_len(&raw), Ok(Some(MAX_HEAD_LEN)));
    assert!(request(&raw).is_ok());
    raw.insert(20, b'a');
    assert_eq!(head_len(&raw), Err(Error::HeadTooLarge));
    assert_eq!(head_len(&raw[..MAX_HEAD_LEN]), Err(Error::HeadTooLarge));
    assert_eq!(head_len(&raw[..MAX_HEAD_LEN - 1]), Ok(None));
    assert_eq!(Error::HeadTooLarge.status(), 431);
}

#[test]
fn a_head_split_at_every_byte_parses_the_same() {
    let raw = b"POST http://100.64.0.1:5252/dns-query HTTP/1.1\r\nHost: peer\r\n\
Content-Type: application/dns-message\r\nContent-Length: 3\r\n\r\nabc";
    let whole = RequestHead::parse_prefix(raw).unwrap().unwrap();
    assert_eq!(whole.1, raw.len() - 3);
    for split in 0..whole.1 {
        assert_eq!(head_len(&raw[..split]), Ok(None), "split at {split}");
        assert_eq!(RequestHead::parse_prefix(&raw[..split]), Ok(None));
        // Received in two reads: the second completes the same head.
        let mut buf = raw[..split].to_vec();
        buf.extend_from_slice(&raw[split..]);
        assert_eq!(
            RequestHead::parse_prefix(&buf).unwrap().as_ref(),
            Some(&whole)
        );
    }

    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (head, len) = ResponseHead::parse_prefix(raw).unwrap().unwrap();
    assert_eq!(head.body_length(), Ok(BodyLength::Chunked));
    for split in 0..len {
        assert_eq!(ResponseHead::parse_prefix(&raw[..split]), Ok(None));
    }
}

#[test]
fn content_length_must_be_one_decimal_number() {
    let framing = |headers: &str| {
        request(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_bytes())
            .unwrap()
            .body_length()
    };
    assert_eq!(framing("Content-Length: 42\r\n"), Ok(BodyLength::Fixed(42)));
    assert_eq!(framing("Content-Length: 007\r\n"), Ok(BodyLength::Fixed(7)));
    // Identical duplicates, as lines or as a list, fold into one.
    assert_eq!(
        framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
        Ok(BodyLength::Fixed(5))
    );
    assert_eq!(
        framing("Content-Length: 5, 5\r\n"),
        Ok(BodyLength::Fixed(5))
    );
    assert_eq!(
        framing("Content-Length: 5\r\nContent-Length: 6\r\n"),
        Err(Error::ConflictingContentLength)
    );
    assert_eq!(
        framing("Content-Length: 5, 6\r\n"),
        Err(Error::ConflictingContentLength)
    );
    for bad in [
        "abc",
        "-1",
        "+5",
        "5 5",
        "0x10",
        "",
        "5,",
        "1e3",
        "18446744073709551616",
        "99999999999999999999999",
    ] {
        assert_eq!(
            framing(&format!("Content-Length: {bad}\r\n")),
            Err(Error::BadContentLength),
            "{bad:?}"
        );
    }
    assert_eq!(
        framing("Content-Length: 18446744073709551615\r\n"),
        Ok(BodyLength::Fixed(u64::MAX))
    );
}

#[test]
fn transfer_encoding_is_chunked_alone_and_never_beside_content_length() {
    let framing = |headers: &str| {
        request(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_bytes())
            .unwrap()
            .body_length()
    };
    assert_eq!(
        framing("Transfer-Encoding: Chunked\r\n"),
        Ok(BodyLength::Chunked)
    );
    for both in [
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: gzip\r\n",
    ] {
        assert_eq!(
            framing(both),
            Err(Error::TransferEncodingWithContentLength),
            "{both:?}"
        );
    }
    for odd in [
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
        "",
    ] {
        assert_eq!(
            framing(&format!("Transfer-Encoding: {odd}\r\n")),
            Err(Error::UnsupportedTransferEncoding),
            "{odd:?}"
        );
    }
    assert_eq!(Error::UnsupportedTransferEncoding.status(), 501);
    let head =
        response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
    assert_eq!(
        head.body_length(),
        Err(Error::TransferEncodingWithContentLength)
    );
}

#[test]
fn response_framing_follows_status_then_headers() {
    let framing = |raw: &[u8]| response(raw).unwrap().body_length();
    assert_eq!(
        framing(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        Ok(BodyLength::Fixed(0))
    );
    assert_eq!(
        framing(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
        Ok(BodyLength::Fixed(0))
    );
    assert_eq!(
        framing(b"HTTP/1.1 304 Not Modified\r\n\r\n"),
        Ok(BodyLength::Fixed(0))
    );
    assert_eq!(
        framing(b"HTTP/1.0 200 OK\r\n\r\n"),
        Ok(BodyLength::UntilClose)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Ok(BodyLength::Fixed(5))
    );
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let (out, used, done) = dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nNEXT").unwrap();
    assert_eq!(out, b"hello world");
    assert!(done);
    assert_eq!(used, 30, "bytes after the body are not the body's");
    let (out, _, done) =
        dechunk(b"A ; name=\"v\"\r\n0123456789\r\n0\r\nX-Trailer: t\r\nY: u\r\n\r\n").unwrap();
    assert_eq!((out.as_slice(), done), (&b"0123456789"[..], true));
    // Incomplete: not done, no error; the last chunk without its final CRLF is not the end.
    for partial in [
        &b"5\r\nhel"[..],
        b"5\r\nhello\r\n",
        b"0\r\n",
        b"0\r\nX: t\r\n",
    ] {
        let (_, used, done) = dechunk(partial).unwrap();
        assert!(!done, "{partial:?}");
        assert_eq!(used, partial.len());
    }
}

#[test]
fn chunked_framing_errors() {
    for (bad, why) in [
        (&b"zz\r\n"[..], Error::BadChunkSize),
        (b"\r\n", Error::BadChunkSize),
        (b" 5\r\n", Error::BadChunkSize),
        (b"-5\r\n", Error::BadChunkSize),
        (b"5x\r\n", Error::BadChunkSize),
        (b"5\n", Error::BadChunkSize),
        (b"5;ext\n", Error::BareLineEnding),
        (b"5\rX", Error::BareLineEnding),
        (b"5\r\nhelloXX0\r\n\r\n", Error::ChunkNotTerminated),
        (b"5\r\nhello\n0\r\n\r\n", Error::ChunkNotTerminated),
        (b"0\r\nX: t\n", Error::BareLineEnding),
        (b"0\r\n\rX", Error::BareLineEnding),
        // 2^64: one hex digit more than a u64 holds.
        (b"10000000000000000\r\n", Error::ChunkSizeOverflow),
        (b"ffffffffffffffffff\r\n", Error::ChunkSizeOverflow),
    ] {
        assert_eq!(
            dechunk(bad).map(|_| ()),
            Err(why),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Garbage that never ends a line is an error, not a buffer that grows.
    let mut long = b"1;".to_vec();
    long.resize(MAX_CHUNK_LINE + 1, b'a');
    assert_eq!(dechunk(&long).map(|_| ()), Err(Error::ChunkLineTooLong));
    let mut long_trailer = b"0\r\nX: ".to_vec();
    long_trailer.resize(MAX_HEAD_LEN + 4, b'a');
    assert_eq!(
        dechunk(&long_trailer).map(|_| ()),
        Err(Error::ChunkLineTooLong)
    );
    // The largest size a u64 holds parses; the body limit is what stops it.
    let mut body = BodyDecoder::new(BodyLength::Chunked, 1 << 20).unwrap();
    let mut out = Vec::new();
    assert_eq!(body.decode(b"ffffffffffffffff\r\n", &mut out), Ok(18));
    assert_eq!(
        body.decode(&[b'x'; (1 << 20) + 1], &mut out),
        Err(Error::BodyTooLarge)
    );
}

#[test]
fn a_chunked_body_split_anywhere_decodes_the_same() {
    let mut wire = Vec::new();
    for msg in [
        &b"{\"State\":2}\n"[..],
        b"{\"BrowseToURL\":\"http://x\"}\n",
        b"z",
    ] {
        encode_chunk(msg, &mut wire);
    }
    encode_chunk(b"", &mut wire);
    wire.extend_from_slice(b"1;ext=1\r\n!\r\n0\r\nTrailer: yes\r\n");
    wire.extend_from_slice(b"\r\n");
    let want = b"{\"State\":2}\n{\"BrowseToURL\":\"http://x\"}\nz!".to_vec();
    assert_eq!(dechunk(&wire).unwrap(), (want.clone(), wire.len(), true));
    for split in 0..=wire.len() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let first = d.decode(&wire[..split], &mut out).unwrap();
        assert_eq!(first, split);
        let second = d.decode(&wire[split..], &mut out).unwrap();
        assert_eq!(second, wire.len() - split);
        assert!(d.is_done(), "split at {split}");
        assert_eq!(out, want);
    }
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    for b in wire.chunks(1) {
        d.decode(b, &mut out).unwrap();
    }
    assert!(d.is_done());
    assert_eq!(out, want);
}

#[test]
fn body_decoder_framings_and_limits() {
    let run = |len: BodyLength, limit: u64, input: &[u8], eof: bool| {
        let mut d = BodyDecoder::new(len, limit)?;
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        if eof {
            d.finish()?;
        }
        Ok::<_, Error>((out, used, d.is_done()))
    };
    assert_eq!(
        run(BodyLength::Fixed(5), 10, b"hello!", false),
        Ok((b"hello".to_vec(), 5, true))
    );
    assert_eq!(
        run(BodyLength::Fixed(5), 10, b"hel", false),
        Ok((b"hel".to_vec(), 3, false))
    );
    assert_eq!(
        run(BodyLength::Fixed(5), 10, b"hel", true),
        Err(Error::BodyTruncated)
    );
    assert_eq!(
        run(BodyLength::Fixed(11), 10, b"", false),
        Err(Error::BodyTooLarge)
    );
    assert_eq!(
        run(BodyLength::Fixed(0), 0, b"", false),
        Ok((Vec::new(), 0, true))
    );
    assert_eq!(
        run(BodyLength::UntilClose, 10, b"abc", false),
        Ok((b"abc".to_vec(), 3, false))
    );
    assert_eq!(
        run(BodyLength::UntilClose, 10, b"abc", true),
        Ok((b"abc".to_vec(), 3, true))
    );
    assert_eq!(
        run(BodyLength::UntilClose, 2, b"abc", false),
        Err(Error::BodyTooLarge)
    );
    assert_eq!(
        run(BodyLength::Chunked, 10, b"3\r\nabc\r\n", true),
        Err(Error::BodyTruncated)
    );
    assert_eq!(
        run(BodyLength::Chunked, 2, b"3\r\nabc\r\n", false),
        Err(Error::BodyTooLarge)
    );
    assert_eq!(Error::BodyTooLarge.status(), 413);
}

#[test]
fn written_heads_look_like_go_and_parse_back() {
    let r = HeadWriter::response(404)
        .header("Content-Type", "text/plain")
        .header("Connection", "close")
        .finish_with_body(b"nope");
    assert_eq!(
        r,
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnope"
    );
    let (head, len) = ResponseHead::parse_prefix(&r).unwrap().unwrap();
    assert_eq!((head.status, &r[len..]), (404, &b"nope"[..]));
    assert_eq!(head.body_length(), Ok(BodyLength::Fixed(4)));

    let q = HeadWriter::request("GET", "/key?v=113")
        .header("Host", "h:80")
        .finish();
    assert_eq!(q, b"GET /key?v=113 HTTP/1.1\r\nHost: h:80\r\n\r\n");
    assert_eq!(request(&q).unwrap().query_param("v"), Some("113"));

    // A value carrying CR/LF cannot add a header line.
    let r = HeadWriter::response(500)
        .header("X-Error", "bad\r\nSet-Cookie: x=1")
        .finish();
    let head = response(&r).unwrap();
    assert_eq!(head.headers.get("X-Error"), Some("bad  Set-Cookie: x=1"));
    assert_eq!(head.headers.get("Set-Cookie"), None);
    assert!(HeadWriter::response(299)
        .finish()
        .starts_with(b"HTTP/1.1 299 \r\n"));
}

/// A reader that hands out one byte per call, the worst a socket can do.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some((&b, rest)) = self.0.split_first() else {
            return Ok(0);
        };
        buf[0] = b;
        self.0 = rest;
        Ok(1)
    }
}

#[test]
fn blocking_reads_stop_at_the_end_of_the_message() {
    let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nNEXT";
    let mut r = Trickle(wire);
    let mut buf = Vec::new();
    let len = blocking::read_head(&mut r, &mut buf).unwrap();
    let head = ResponseHead::parse(&buf[..len]).unwrap();
    let body = BodyDecoder::new(head.body_length().unwrap(), 100).unwrap();
    assert_eq!(
        blocking::read_body(&mut r, &buf[len..], body).unwrap(),
        b"abc"
    );
    assert_eq!(r.0, b"NEXT", "read past the body");

    let mut buf = Vec::new();
    match blocking::read_head(&mut Trickle(b"HTTP/1.1 200 OK\r\n"), &mut buf) {
        Err(ReadError::Closed { received: 17 }) => {}
        other => panic!("{other:?}"),
    }
    match blocking::read_head(&mut Trickle(b"GET / HTTP/1.1\n"), &mut Vec::new()) {
        Err(ReadError::Http(Error::BareLineEnding)) => {}
        other => panic!("{other:?}"),
    }
    let fixed = BodyDecoder::new(BodyLength::Fixed(5), 100).unwrap();
    match blocking::read_body(&mut Trickle(b"cd"), b"ab", fixed) {
        Err(ReadError::Http(Error::BodyTruncated)) => {}
        other => panic!("{other:?}"),
    }
    let until_close = BodyDecoder::new(BodyLength::UntilClose, 100).unwrap();
    assert_eq!(
        blocking::read_body(&mut Trickle(b"cd"), b"ab", until_close).unwrap(),
        b"abcd"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn async_reads_match_the_blocking_ones() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let wire = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcNEXT";
        let mut r = &wire[..];
        let mut buf = Vec::new();
        let len = tokio_io::read_head(&mut r, &mut buf).await.unwrap();
        let head = RequestHead::parse(&buf[..len]).unwrap();
        let body = BodyDecoder::new(head.body_length().unwrap(), 100).unwrap();
        assert_eq!(
            tokio_io::read_body(&mut r, &buf[len..], body)
                .await
                .unwrap(),
            b"abc"
        );
        match tokio_io::read_head(&mut &b"POST /x HTTP/1.1\r\n"[..], &mut Vec::new()).await {
            Err(ReadError::Closed { received: 18 }) => {}
            other => panic!("{other:?}"),
        }
    });
}
