//! A minimal ts2021 server that logs what clients send: for checking the wire format
//! against the real Go client (see shared/docs/real-peers.md). It serves `GET /key` and the
//! Noise upgrade, then answers every HTTP/2 request with a JSON error body after logging
//! the method, path, machine key, and the body (first 4 KiB).
//!
//!     cargo run -p ringscale-control --example ts2021_server -- 10.99.0.1:8080

#![forbid(unsafe_code)]

use std::sync::Arc;

use ringscale_control::noise::generate_private_key;
use ringscale_control::ts2021::{format_key, serve, Handler, IncomingRequest, ServerConfig};

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        eprintln!("{} {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

struct LoggingHandler;

impl Handler for LoggingHandler {
    async fn handle(&self, req: IncomingRequest) {
        let method = req.request.method().clone();
        let path = req.request.uri().path().to_string();
        let body = req
            .request
            .into_body()
            .read_to_end(1 << 20)
            .await
            .unwrap_or_default();
        let excerpt = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
        eprintln!(
            "REQUEST {method} {path} from {} (v{}): {} bytes: {excerpt}",
            format_key("mkey:", &req.machine_public),
            req.protocol_version,
            body.len()
        );
        let reply = br#"{"Error":"ts2021_server example: not a real control server"}"#.to_vec();
        let _ = req.respond.send_json(200, reply);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    log::set_logger(&StderrLogger).expect("logger");
    log::set_max_level(log::LevelFilter::Debug);
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let config = Arc::new(ServerConfig::new(generate_private_key()));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!(
        "listening on {addr}, server key {}",
        format_key("mkey:", &config.public_key())
    );
    serve(listener, config, Arc::new(LoggingHandler))
        .await
        .expect("serve");
}
