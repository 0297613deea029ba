//! iperf3 workloads between two namespaces, for the throughput benchmarks: TCP with one or
//! more streams, UDP at a fixed datagram size as fast as iperf3 can send (`-b 0`), parsed
//! from iperf3's JSON into Gbit/s, received packets/s and loss; and the median of repeated
//! measurements.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{netns::NetNs, topology::spawn_in};

/// Ethernet (14) + IPv4 (20) + UDP (8) around a UDP payload.
pub const UDP_FRAME_OVERHEAD: u32 = 42;

/// What one iperf3 run sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Traffic {
    /// TCP with this many parallel streams (`-P`).
    Tcp { streams: u32 },
    /// UDP datagrams with this many payload bytes (`-l`), `-b 0`.
    Udp { payload: u32 },
}

/// A named workload: `key` goes into record names (`tcp_1stream`, `udp_64B`, ...).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub key: &'static str,
    /// For people: what is sent.
    pub label: &'static str,
    pub traffic: Traffic,
}

impl Workload {
    /// The Ethernet frame size on the tenant host's link of a UDP workload.
    pub fn frame_bytes(&self) -> Option<u32> {
        match self.traffic {
            Traffic::Udp { payload } => Some(payload + UDP_FRAME_OVERHEAD),
            Traffic::Tcp { .. } => None,
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measurement {
    /// TCP: received goodput. UDP: received frames x frame size (tenant link bits).
    pub gbps: f64,
    /// UDP only: datagrams received per second of sending.
    pub received_pps: Option<f64>,
    /// UDP only: fraction of the datagrams sent that did not arrive.
    pub loss: Option<f64>,
    /// TCP only: the sender's retransmissions.
    pub retransmits: Option<u64>,
}

/// Waits (bounded) until something listens on TCP `port` in `ns`.
fn wait_listening(ns: &NetNs, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    loop {
        let out = ns.exec(&["ss", "-Hltn", &filter]).unwrap_or_default();
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on TCP {port} in {} after {timeout:?}",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One iperf3 run of `secs` seconds from `client` to a one-shot server bound to
/// `server_addr` in `server`. Bounded: the client is killed after `secs + 30` s, the server
/// when this returns.
pub fn run(
    client: &NetNs,
    server: &NetNs,
    server_addr: &str,
    traffic: Traffic,
    secs: u32,
) -> Result<Measurement> {
    let _server = spawn_in(server, &["iperf3", "-s", "-1", "-B", server_addr])?;
    wait_listening(server, 5201, Duration::from_secs(5))?;
    let limit = (secs + 30).to_string();
    let t = secs.to_string();
    let mut cmd = vec![
        "timeout",
        &limit,
        "iperf3",
        "-c",
        server_addr,
        "-J",
        "-t",
        &t,
    ];
    let (p, l);
    match traffic {
        Traffic::Tcp { streams } => {
            p = streams.to_string();
            cmd.extend(["-P", &p]);
        }
        Traffic::Udp { payload } => {
            l = payload.to_string();
            cmd.extend(["-u", "-b", "0", "-l", &l]);
        }
    }
    let out = client
        .exec(&cmd)
        .with_context(|| format!("iperf3 {traffic:?} {} -> {server_addr}", client.name()))?;
    parse(&out, traffic)
}

/// Reads one run's JSON report.
pub fn parse(json: &str, traffic: Traffic) -> Result<Measurement> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    match traffic {
        Traffic::Tcp { .. } => {
            let bps = end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("TCP result: end.sum_received.bits_per_second")?;
            Ok(Measurement {
                gbps: bps / 1e9,
                retransmits: end["sum_sent"]["retransmits"].as_u64(),
                ..Default::default()
            })
        }
        Traffic::Udp { payload } => {
            let sum = &end["sum"];
            let secs = sum["seconds"].as_f64().context("UDP result: seconds")?;
            let sent = sum["packets"].as_f64().context("UDP result: packets")?;
            let lost = sum["lost_packets"]
                .as_f64()
                .context("UDP result: lost_packets")?;
            if secs <= 0.0 || sent <= 0.0 {
                bail!("iperf3 sent nothing: {sum}");
            }
            // iperf3 counts reordered datagrams as lost and then takes them back; clamp.
            let lost = lost.clamp(0.0, sent);
            let pps = (sent - lost) / secs;
            Ok(Measurement {
                gbps: pps * f64::from(payload + UDP_FRAME_OVERHEAD) * 8.0 / 1e9,
                received_pps: Some(pps),
                loss: Some(lost / sent),
                retransmits: None,
            })
        }
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn parses_udp_and_tcp_reports() {
        let udp = r#"{"end":{"sum":{"seconds":2.0,"packets":1000,"lost_packets":250}}}"#;
        let m = parse(udp, Traffic::Udp { payload: 22 }).unwrap();
        assert_eq!(m.received_pps, Some(375.0));
        assert_eq!(m.loss, Some(0.25));
        assert!((m.gbps - 375.0 * 64.0 * 8.0 / 1e9).abs() < 1e-12);
        let tcp =
            r#"{"end":{"sum_received":{"bits_per_second":2.5e9},"sum_sent":{"retransmits":7}}}"#;
        let m = parse(tcp, Traffic::Tcp { streams: 1 }).unwrap();
        assert_eq!((m.gbps, m.retransmits), (2.5, Some(7)));
        assert!(
            parse(
                r#"{"error":"unable to connect"}"#,
                Traffic::Tcp { streams: 1 }
            )
            .is_err()
        );
    }
}
