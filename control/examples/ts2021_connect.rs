//! Connects to a control server over ts2021 and POSTs a JSON body to a path, printing the
//! response. Also the yardstick for the binary-size cost of the `tls` feature.
//!
//!     cargo run -p ringscale-control --example ts2021_connect -- http://127.0.0.1:8080 /machine/register '{}'

#![forbid(unsafe_code)]

use ringscale_control::noise::generate_private_key;
use ringscale_control::ts2021::connect;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let path = args.next().unwrap_or_else(|| "/machine/register".into());
    let body = args.next().unwrap_or_else(|| "{}".into());
    let conn = match connect(&url, &generate_private_key(), None).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    match conn.post_json(&path, body.into_bytes(), &[]).await {
        Ok(resp) => {
            println!("status {}", resp.status());
            match resp.into_body().read_to_end(1 << 20).await {
                Ok(b) => println!("{}", String::from_utf8_lossy(&b)),
                Err(e) => eprintln!("error reading body: {e}"),
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
