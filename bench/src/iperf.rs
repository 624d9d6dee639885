//! One iperf3 run across a bed: a one-shot server in the server namespace, the client
//! in the client namespace, `--json` output parsed with serde_json.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ringscale_tests::testbed::Proc;

use crate::bed::Bed;
use crate::cases::Test;
use crate::cleanup;
use crate::sys::wait_until;

const PORT: &str = "5201";

/// What iperf3 reported, seen from the receiving side.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub bits_per_second: f64,
    pub bytes: u64,
    /// TCP retransmits by the sender.
    pub retransmits: Option<u64>,
    pub udp_lost_percent: Option<f64>,
}

pub struct Params<'a> {
    pub iperf3: &'a Path,
    pub test: &'a Test,
    pub duration_s: u32,
    /// The MTU the traffic crosses: sizes UDP datagrams to fill it without fragmenting.
    pub mtu: u32,
    pub udp_rate: &'a str,
}

/// Runs one iperf3 test; bounded by the duration plus a margin, and by Ctrl-C.
pub fn run(bed: &Bed, p: &Params) -> Result<Outcome, String> {
    let mut server = bed.server().command(p.iperf3);
    server
        .args(["-s", "-1", "-p", PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Proc::spawn(server);
    let listening = wait_until(Duration::from_secs(5), || {
        bed.server()
            .ns
            .command("ss")
            .args(["-Hltn", &format!("sport = :{PORT}")])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    })?;
    if !listening {
        return Err("iperf3 server did not start listening".into());
    }

    let out_path = bed.logs.path.join("iperf3-client.json");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("{out_path:?}: {e}"))?;
    let mut client = bed.client().command(p.iperf3);
    client
        .args([
            "-c",
            &bed.target,
            "-p",
            PORT,
            "--json",
            "--connect-timeout",
            "5000",
        ])
        .args(["-t", &p.duration_s.to_string()])
        .args(["-P", &p.test.streams.to_string()]);
    if p.test.reverse {
        client.arg("-R");
    }
    if p.test.udp() {
        // IPv4 + UDP headers are 28 bytes: the largest datagram that fits the MTU.
        let len = p.mtu.saturating_sub(28).max(64);
        // -w: 4 MiB socket buffers (the most net.core.rmem_max allows here) on both
        // iperf3 ends; with the default 208 KiB iperf3's own receiver overflows at a few
        // hundred Mbit/s even on plain veth, and the knee would be iperf3's.
        client
            .args(["-u", "-b", p.udp_rate, "-w", "4M"])
            .args(["-l", &len.to_string()]);
    }
    // With --json, errors are in the JSON too.
    client.stdout(out).stderr(Stdio::null());
    let mut client = Proc::spawn(client);

    let limit = Duration::from_secs(u64::from(p.duration_s) + 20);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = client.exited() {
            break s;
        }
        if cleanup::interrupted() {
            return Err("interrupted".into());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "iperf3 client still running after {limit:?}; killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let json = std::fs::read_to_string(&out_path).map_err(|e| format!("{out_path:?}: {e}"))?;
    let outcome = parse(&json);
    if !status.success() && outcome.is_err() {
        return Err(format!("iperf3 client failed ({status}): {}", json.trim()));
    }
    outcome
}

/// Reads the receiver's view from `iperf3 --json`: `end.sum_received` (iperf3 ≥ 3.1 has
/// it for TCP and UDP), retransmits from `end.sum_sent`, loss from `end.sum`.
pub fn parse(json: &str) -> Result<Outcome, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &v["end"];
    let recv = &end["sum_received"];
    let bits_per_second = recv["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let bytes = recv["bytes"]
        .as_u64()
        .ok_or("iperf3 JSON has no end.sum_received.bytes")?;
    Ok(Outcome {
        bits_per_second,
        bytes,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        udp_lost_percent: recv["lost_percent"]
            .as_f64()
            .or_else(|| end["sum"]["lost_percent"].as_f64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_receiver_side() {
        let json = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"bytes":2000,"bits_per_second":1600.0,"retransmits":7,"sender":true},
            "sum_received":{"bytes":1900,"bits_per_second":1520.0,"sender":false}}}"#;
        let o = parse(json).unwrap();
        assert_eq!(o.bits_per_second, 1520.0);
        assert_eq!(o.bytes, 1900);
        assert_eq!(o.retransmits, Some(7));
        assert_eq!(o.udp_lost_percent, None);
    }

    #[test]
    fn udp_loss() {
        let json = r#"{"end":{"sum":{"lost_percent":13.4},
            "sum_sent":{"bytes":100,"bits_per_second":800.0,"lost_percent":0},
            "sum_received":{"bytes":87,"bits_per_second":690.0,"lost_percent":13.4}}}"#;
        let o = parse(json).unwrap();
        assert_eq!(o.udp_lost_percent, Some(13.4));
        assert_eq!(o.bytes, 87);
    }

    #[test]
    fn errors_are_reported() {
        assert!(parse("not json").is_err());
        let e = parse(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(e.contains("unable to connect"), "{e}");
        assert!(parse(r#"{"end":{}}"#).is_err());
    }
}
