//! The ts2021 client against the ts2021 server over real loopback TCP: `GET /key`, the
//! upgrade, the Noise handshake, the early payload, HTTP/2 requests with bodies and
//! streamed responses — and a server that survives clients sending garbage.

#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringscale_control::noise::{generate_private_key, public_key};
use ringscale_control::ts2021::{
    self, connect, connect_with, format_key, serve, ConnectOptions, ControlUrl, Handler,
    Http1Request, Http1Response, IncomingRequest, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A test handler: `/echo` answers the request body reversed; `/stream` sends one chunk,
/// waits until the test releases it, then sends the rest; `/big` streams `n` bytes.
#[derive(Default)]
struct TestHandler {
    seen_machine_keys: Mutex<Vec<[u8; 32]>>,
    release: Notify,
}

impl Handler for TestHandler {
    async fn handle(&self, req: IncomingRequest) {
        self.seen_machine_keys
            .lock()
            .unwrap()
            .push(req.machine_public);
        let path = req.request.uri().path().to_string();
        let ts_lb: Vec<String> = req
            .request
            .headers()
            .get_all("ts-lb")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let body = req.request.into_body().read_to_end(1 << 20).await.unwrap();
        match path.as_str() {
            "/echo" => {
                let mut reversed = body.clone();
                reversed.reverse();
                reversed.extend_from_slice(ts_lb.join(",").as_bytes());
                req.respond.send_json(200, reversed).unwrap();
            }
            "/stream" => {
                let mut out = req.respond.stream(200, &[]).unwrap();
                out.send(Bytes::from_static(b"first;")).await.unwrap();
                self.release.notified().await;
                out.send(Bytes::from_static(b"second;")).await.unwrap();
                out.finish().unwrap();
            }
            "/big" => {
                let n: usize = String::from_utf8(body).unwrap().parse().unwrap();
                let mut out = req.respond.stream(200, &[]).unwrap();
                let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                for chunk in data.chunks(100_000) {
                    out.send(Bytes::copy_from_slice(chunk)).await.unwrap();
                }
                out.finish().unwrap();
            }
            _ => req.respond.send(404, &[], Bytes::new()).unwrap(),
        }
    }

    async fn handle_http1(&self, request: Http1Request) -> Http1Response {
        Http1Response::text(200, &format!("plain {}", request.head.path()))
    }
}

struct TestServer {
    url: String,
    addr: std::net::SocketAddr,
    config: Arc<ServerConfig>,
    handler: Arc<TestHandler>,
}

async fn start_server(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let mut config = ServerConfig::new(generate_private_key());
    config.handshake_timeout = Duration::from_secs(2);
    configure(&mut config);
    let config = Arc::new(config);
    let handler = Arc::new(TestHandler::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, config.clone(), handler.clone()));
    TestServer {
        url: format!("http://{addr}"),
        addr,
        config,
        handler,
    }
}

async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn client_connects_posts_and_reads_a_streamed_response() {
    bounded(async {
        let server = start_server(|_| {}).await;
        let machine = generate_private_key();
        // No server key given: the client fetches it with GET /key first.
        let conn = connect(&server.url, &machine, None).await.unwrap();
        assert_eq!(conn.server_public(), server.config.public_key());
        assert_eq!(conn.protocol_version(), ts2021::CAPABILITY_VERSION);

        let resp = conn
            .post_json("/echo", b"[1,2,3]".to_vec(), &["nodekey:aa", "nodekey:bb"])
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = resp.into_body().read_to_end(1024).await.unwrap();
        assert_eq!(body, b"]3,2,1[nodekey:aa,nodekey:bb");

        // The server saw the machine key the client proved in the handshake.
        assert_eq!(
            server.handler.seen_machine_keys.lock().unwrap().as_slice(),
            &[public_key(&machine)]
        );

        // The early payload (sent like Headscale does) carried a challenge key.
        let early = conn
            .early_payload()
            .await
            .unwrap()
            .expect("server sent an early payload");
        assert!(
            early.node_key_challenge.starts_with("chalpub:"),
            "{early:?}"
        );
        assert_eq!(early.node_key_challenge.len(), "chalpub:".len() + 64);

        // Streaming: the first chunk arrives while the server still holds the rest back.
        let resp = conn
            .post_json("/stream", b"{}".to_vec(), &[])
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.chunk().await.unwrap().unwrap();
        assert_eq!(&first[..], b"first;");
        assert!(!body.is_end_stream());
        server.handler.release.notify_one();
        let second = body.chunk().await.unwrap().unwrap();
        assert_eq!(&second[..], b"second;");
        assert!(body.chunk().await.is_none());
        assert!(!conn.is_closed());
    })
    .await;
}

#[tokio::test]
async fn large_streamed_response_is_not_stalled_by_flow_control() {
    bounded(async {
        let server = start_server(|_| {}).await;
        let conn = connect(
            &server.url,
            &generate_private_key(),
            Some(server.config.public_key()),
        )
        .await
        .unwrap();
        // 5 MB: more than the 2 MiB connection window, so it only completes if reading
        // the body returns flow-control credit. Two requests at once share the connection.
        let n = 5_000_000usize;
        let (a, b) = tokio::join!(
            conn.post_json("/big", n.to_string().into_bytes(), &[]),
            conn.post_json("/echo", vec![7u8; 300_000], &[])
        );
        let big = a.unwrap().into_body().read_to_end(n).await.unwrap();
        assert_eq!(big.len(), n);
        assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert_eq!(
            b.unwrap().into_body().read_to_end(1 << 20).await.unwrap(),
            vec![7u8; 300_000]
        );
    })
    .await;
}

#[tokio::test]
async fn server_without_early_payload_works_too() {
    bounded(async {
        // Go's testcontrol sends no early payload: the client must hand the first 9 bytes
        // (an HTTP/2 frame header) back to HTTP/2.
        let server = start_server(|c| c.send_early_payload = false).await;
        let conn = connect(&server.url, &generate_private_key(), None)
            .await
            .unwrap();
        let resp = conn.post_json("/echo", b"ab".to_vec(), &[]).await.unwrap();
        assert_eq!(resp.into_body().read_to_end(64).await.unwrap(), b"ba");
        assert_eq!(conn.early_payload().await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn client_errors_are_clear() {
    bounded(async {
        let server =
            start_server(|c| c.min_protocol_version = ts2021::CAPABILITY_VERSION + 1).await;
        let machine = generate_private_key();

        // A server refusing our version answers with an error frame.
        let err = connect(&server.url, &machine, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported protocol version"), "{err}");

        // The wrong server key: the server cannot decrypt our machine key.
        let server = start_server(|_| {}).await;
        let err = connect(
            &server.url,
            &machine,
            Some(public_key(&generate_private_key())),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("handshake failed"), "{err}");

        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let err = connect(&dead_url, &machine, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fetching the control server key") && err.contains("refused"),
            "{err}"
        );

        // A server that is not a control server.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such\n\n")
                    .await
                    .unwrap();
            }
        });
        let err = connect(&url, &machine, None).await.unwrap_err().to_string();
        assert!(err.contains("unexpected HTTP status 404: no such"), "{err}");
        let err = connect(&url, &machine, Some([9; 32]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("POST /ts2021") && err.contains("404"), "{err}");

        // A server that switches protocols and hangs up (what Headscale does to versions
        // it refuses), and one that switches to a protocol we did not ask for.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for upgrade in ["tailscale-control-protocol", "h2c"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\nConnection: upgrade\r\n\r\n"
                );
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let err = connect(&url, &machine, Some([9; 32])).await.unwrap_err().to_string();
        assert!(
            err.contains("without a handshake response")
                && err.contains(&format!("capability version {}", ts2021::CAPABILITY_VERSION)),
            "{err}"
        );
        let err = connect(&url, &machine, Some([9; 32])).await.unwrap_err().to_string();
        assert!(err.contains("switched to protocol Some(\"h2c\")"), "{err}");

        // A server that accepts and then says nothing: bounded by the handshake timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = ControlUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let opts = ConnectOptions {
            handshake_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let err = connect_with(&url, &machine, Some([9; 32]), &opts)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        drop(listener);

        let err = connect("ftp://example", &machine, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid control URL"), "{err}");

        // https:// means TLS: against our plain-HTTP server the TLS handshake fails, and
        // the error says so (the server answers the ClientHello with a 400).
        let https = server.url.replace("http://", "https://");
        let err = connect(&https, &machine, None)
            .await
            .unwrap_err()
            .to_string();
        if cfg!(feature = "tls") {
            assert!(err.contains("(TLS)") && err.contains("GET /key"), "{err}");
        } else {
            assert!(err.contains("no TLS support"), "{err}");
        }
    })
    .await;
}

/// Sends `bytes` on a fresh connection and returns whatever the server answers before
/// closing (bounded).
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn garbage_from_clients_does_not_bring_the_server_down() {
    bounded(async {
        let server = start_server(|_| {}).await;
        let addr = server.addr;
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(b)
        };

        // Binary junk (a TLS ClientHello start) and an endless header: 400.
        let out = send_raw(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&out));
        let out = send_raw(addr, &[b'A'; 40_000]).await;
        assert!(out.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&out));

        // Upgrade requests with missing or broken handshake material.
        let out = send_raw(addr, b"POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400"));
        let out = send_raw(addr, b"POST /ts2021 HTTP/1.1\r\nX-Tailscale-Handshake: AAAA\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400"));
        let out = send_raw(
            addr,
            b"POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: !!!\r\n\r\n",
        )
        .await;
        assert!(out.starts_with(b"HTTP/1.1 400"));

        // Well-formed base64 of a wrong-size and of a forged initiation: 101, then an
        // error frame, then close.
        for (init, text) in [
            (vec![0u8; 10], &b"wrong handshake initiation size"[..]),
            ({
                let mut v = vec![0x5a; 101];
                v[..5].copy_from_slice(&[0, 113, 1, 0, 96]);
                v
            }, &b"handshake failed"[..]),
        ] {
            let req = format!(
                "POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: {}\r\n\r\n",
                b64(&init)
            );
            let out = send_raw(addr, req.as_bytes()).await;
            assert!(out.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&out));
            let frame = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            assert_eq!(frame[0], 3, "error frame");
            assert_eq!(&frame[3..], text);
        }

        // A real handshake followed by garbage instead of records: the connection dies,
        // the server does not.
        let machine = generate_private_key();
        let (_hs, init) = ringscale_control::noise::InitiatorHandshake::start(&machine, &server.config.public_key(), 113).unwrap();
        let mut req = format!(
            "POST /ts2021 HTTP/1.1\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: {}\r\n\r\n",
            b64(&init)
        )
        .into_bytes();
        req.extend_from_slice(&[4, 0x0f, 0xff, 1, 2, 3]);
        let out = send_raw(addr, &req).await;
        assert!(out.starts_with(b"HTTP/1.1 101"));

        // A client that connects and sends nothing is dropped after the handshake timeout.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "idle connection was not closed by the server");

        // Plain HTTP/1.1 requests reach the handler's HTTP/1.1 side.
        let out = send_raw(addr, b"GET /register/abc HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(out.ends_with(b"plain /register/abc"), "{:?}", String::from_utf8_lossy(&out));
        let out = send_raw(addr, b"GET /key HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400"), "v is mandatory");
        let out = send_raw(addr, b"GET /key?v=130 HTTP/1.1\r\n\r\n").await;
        let expected = format!("\"publicKey\":\"{}\"", format_key("mkey:", &server.config.public_key()));
        assert!(String::from_utf8_lossy(&out).contains(&expected));

        // After all that, a real client still gets served.
        let conn = connect(&server.url, &generate_private_key(), None).await.unwrap();
        let resp = conn.post_json("/echo", b"ok".to_vec(), &[]).await.unwrap();
        assert_eq!(resp.into_body().read_to_end(64).await.unwrap(), b"ko");
    })
    .await;
}
