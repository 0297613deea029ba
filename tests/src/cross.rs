//! Two sites keyed by IKEv2 between two vpnds, each on the backend of its choice: the kernel
//! (xfrm; the site routes its tenant in its own kernel) or AF_XDP (vpnd's workers are the
//! tenant's gateway). Used by the kernel backend's cross-implementation test and by the
//! backend benchmark. Dropping a [`Cross`] stops both daemons and deletes every namespace.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{NetNs, TempDir},
    topology::{Log, Proc, mac_of, start_vpnd_with, veth, vpnd_path},
};

pub const PSK: &str = "cross implementation test secret";
/// The tenant gateway MAC of an AF_XDP site (vpnd's workers answer for it).
pub const GW_AFXDP: &str = "02:ee:00:00:0b:01";

pub struct Cross {
    pub a_vpnd: Option<(Proc, Log)>,
    pub b_vpnd: Option<(Proc, Log)>,
    pub ha: NetNs,
    pub hb: NetNs,
    pub a: NetNs,
    pub b: NetNs,
    pub dir: TempDir,
    /// (A, B) on the kernel backend.
    pub kernel: (bool, bool),
}

#[allow(clippy::too_many_arguments)]
pub fn node_config(
    instance: &str,
    tenant: &str,
    local: &str,
    peer: &str,
    lnet: &str,
    pnet: &str,
    initiator: &str,
    backend: &str,
) -> String {
    format!(
        "instance = \"{instance}\"\n[wire]\ninterface = \"wire\"\n{tenant}\n\
         [[ikepolicy]]\nname = \"ike\"\nproposals = [\"aes256gcm16-prfsha256-ecp256\"]\n\
         [[ipsecpolicy]]\nname = \"esp\"\nproposals = [\"aes128gcm16-ecp256-esn\"]\n\
         [[vpnservice]]\nname = \"svc\"\ntenant = 1\nexternal_address = \"{local}\"\n\
         local_subnets = [\"{lnet}\"]\n\
         [[ipsec_site_connection]]\nname = \"x\"\nvpnservice = \"svc\"\nikepolicy = \"ike\"\n\
         ipsecpolicy = \"esp\"\npeer_address = \"{peer}\"\npeer_cidrs = [\"{pnet}\"]\n\
         psk = \"{PSK}\"\ninitiator = \"{initiator}\"\nbackend = \"{backend}\"\n"
    )
}

impl Cross {
    /// A: 172.24.4.226, tenant 10.1.0.0/24 (host ha 10.1.0.5); B: 172.24.4.233, tenant
    /// 10.2.0.0/24 (host hb 10.2.0.9). A site on the kernel backend routes its tenant in its
    /// kernel (gateway address on `ten`, forwarding, a route to the peer subnet); a site on
    /// AF_XDP has vpnd's workers as the tenant's gateway (a MAC they answer for).
    pub fn build(a_kernel: bool, b_kernel: bool) -> Result<Cross> {
        let dir = TempDir::new("vpn-cross")?;
        let a = NetNs::new("xA")?;
        let b = NetNs::new("xB")?;
        let ha = NetNs::new("xHa")?;
        let hb = NetNs::new("xHb")?;
        for ns in [&a, &b, &ha, &hb] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        }
        veth(&a, "wire", &b, "wire")?;
        veth(&a, "ten", &ha, "eth0")?;
        veth(&b, "ten", &hb, "eth0")?;
        a.ip(&["addr", "add", "172.24.4.226/24", "dev", "wire"])?;
        b.ip(&["addr", "add", "172.24.4.233/24", "dev", "wire"])?;
        for (node, host, kernel, gw, host_addr, peer_net, peer) in [
            (
                &a,
                &ha,
                a_kernel,
                "10.1.0.1",
                "10.1.0.5",
                "10.2.0.0/24",
                "172.24.4.233",
            ),
            (
                &b,
                &hb,
                b_kernel,
                "10.2.0.1",
                "10.2.0.9",
                "10.1.0.0/24",
                "172.24.4.226",
            ),
        ] {
            host.ip(&["addr", "add", &format!("{host_addr}/24"), "dev", "eth0"])?;
            if kernel {
                node.ip(&["addr", "add", &format!("{gw}/24"), "dev", "ten"])?;
                node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
                node.ip(&["route", "add", peer_net, "via", peer, "dev", "wire"])?;
            } else {
                host.ip(&[
                    "neigh",
                    "replace",
                    gw,
                    "lladdr",
                    GW_AFXDP,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
            host.ip(&["route", "add", "default", "via", gw])?;
            // Inner packets that fit the tunnel without outer fragments.
            host.ip(&["link", "set", "eth0", "mtu", "1400"])?;
            host.exec(&[
                "ethtool", "-K", "eth0", "tx", "off", "gso", "off", "tso", "off",
            ])?;
        }
        Ok(Cross {
            a_vpnd: None,
            b_vpnd: None,
            ha,
            hb,
            a,
            b,
            dir,
            kernel: (a_kernel, b_kernel),
        })
    }

    pub fn config(&self, site_a: bool) -> Result<String> {
        let (node, host, kernel, gw) = if site_a {
            (&self.a, &self.ha, self.kernel.0, "10.1.0.1")
        } else {
            (&self.b, &self.hb, self.kernel.1, "10.2.0.1")
        };
        let gw_mac = if kernel {
            mac_of(node, "ten")?
        } else {
            GW_AFXDP.to_string()
        };
        let tenant = format!(
            "[[tenant]]\nid = 1\ninterface = \"ten\"\ngateway_ip = \"{gw}\"\n\
             gateway_mac = \"{gw_mac}\"\nhost_mac = \"{}\"\n",
            mac_of(host, "eth0")?
        );
        let backend = if kernel { "kernel" } else { "afxdp" };
        Ok(if site_a {
            node_config(
                node.name(),
                &tenant,
                "172.24.4.226",
                "172.24.4.233",
                "10.1.0.0/24",
                "10.2.0.0/24",
                "bi-directional",
                backend,
            )
        } else {
            node_config(
                node.name(),
                &tenant,
                "172.24.4.233",
                "172.24.4.226",
                "10.2.0.0/24",
                "10.1.0.0/24",
                "response-only",
                backend,
            )
        })
    }

    /// Starts B then A and waits (bounded) until both say the connection is up and a ping
    /// crosses A -> B.
    pub fn start(&mut self) -> Result<()> {
        self.start_with(None)
    }

    /// [`Cross::start`] with site A's configuration given (e.g. edited from [`Cross::config`]).
    pub fn start_with(&mut self, a_cfg: Option<String>) -> Result<()> {
        let a_cfg = match a_cfg {
            Some(c) => c,
            None => self.config(true)?,
        };
        let b_cfg = self.config(false)?;
        let dir = self.dir.path().to_path_buf();
        self.b_vpnd = Some(start_vpnd_with(&self.b, &b_cfg, &dir, &[])?);
        self.a_vpnd = Some(start_vpnd_with(&self.a, &a_cfg, &dir, &[])?);
        for (v, who) in [(&self.a_vpnd, "A"), (&self.b_vpnd, "B")] {
            let log = &v.as_ref().unwrap().1;
            log.wait_for(Duration::from_secs(60), |l| l.contains("conn x: ACTIVE"))
                .with_context(|| format!("site {who} did not come up:\n{}", log.text()))?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while ping(&self.ha, "10.2.0.9", 1).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "no ping A->B through the tunnel\nA: {}\nB: {}\nA xfrm: {}",
                    self.a_vpnd.as_ref().unwrap().1.text(),
                    self.b_vpnd.as_ref().unwrap().1.text(),
                    xfrm_states(&self.a, true).unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Cross {
    fn drop(&mut self) {
        for (p, _) in [self.a_vpnd.as_mut(), self.b_vpnd.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = p.signal(libc::SIGTERM);
            if !p.wait_exit(Duration::from_secs(10)) {
                let _ = p.signal(libc::SIGKILL);
            }
        }
    }
}

pub fn vpnctl(instance: &str, args: &[&str]) -> Result<serde_json::Value> {
    let p: PathBuf = vpnd_path()?.with_file_name("vpnctl");
    let out = Command::new(p)
        .args(["--instance", instance, "--json"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("vpnctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Sends `len` patterned bytes from `from` to `to_addr:port` served in `to`; the server
/// checks every byte. Both ends run on threads inside the namespaces.
pub fn tcp_transfer(from: &NetNs, to: &NetNs, to_addr: &str, port: u16, len: usize) -> Result<()> {
    tcp_transfer_timed(from, to, to_addr, port, len).map(|_| ())
}

/// [`tcp_transfer`], returning the time from the client's connect to the server having read
/// (and checked) the last byte; the data is generated before the clock starts.
pub fn tcp_transfer_timed(
    from: &NetNs,
    to: &NetNs,
    to_addr: &str,
    port: u16,
    len: usize,
) -> Result<Duration> {
    let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8;
    let data: Vec<u8> = (0..len).map(pattern).collect();
    let listener = {
        let _in = to.enter()?;
        TcpListener::bind((to_addr, port))?
    };
    let server = std::thread::spawn(move || -> Result<usize> {
        listener.set_nonblocking(false)?;
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            for (j, b) in buf[..n].iter().enumerate() {
                if *b != pattern(got + j) {
                    bail!("byte {} differs", got + j);
                }
            }
            got += n;
        }
        Ok(got)
    });
    let start = Instant::now();
    let stream = {
        let _in = from.enter()?;
        let addr = format!("{to_addr}:{port}").parse()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    };
    let mut stream = stream.context("connecting through the tunnel")?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    for chunk in data.chunks(16 * 1024) {
        stream.write_all(chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    let elapsed = start.elapsed();
    if got != len {
        bail!("{got} of {len} bytes arrived");
    }
    Ok(elapsed)
}

pub fn ping(from: &NetNs, to: &str, count: u32) -> Result<()> {
    let c = count.to_string();
    // busybox ping in the lane, iputils here: both take -c and -W.
    from.exec(&["ping", "-c", &c, "-W", "2", to])
        .with_context(|| format!("ping {to} from {}", from.name()))?;
    Ok(())
}

/// `ip [-s] xfrm state` of a namespace with the keys masked: test keys are throw-away, but
/// what tests print on failure must not carry key material either.
pub fn xfrm_states(ns: &NetNs, stats: bool) -> Result<String> {
    let text = if stats {
        ns.ip(&["-s", "xfrm", "state"])?
    } else {
        ns.ip(&["xfrm", "state"])?
    };
    Ok(redact_keys(&text))
}

/// Replaces the hex key of every `aead`/`enc`/`auth` line of `ip xfrm state` output.
pub fn redact_keys(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if ["aead ", "enc ", "auth ", "auth-trunc "]
                .iter()
                .any(|p| t.starts_with(p))
            {
                l.split(' ')
                    .map(|w| if w.starts_with("0x") { "0x<key>" } else { w })
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_masked() {
        let t = "src 1.2.3.4 dst 5.6.7.8\n\tproto esp spi 0x00001234 reqid 7 mode tunnel\n\
                 \taead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 (160 bits) 128";
        let r = super::redact_keys(t);
        assert!(!r.contains("0102030405"), "{r}");
        assert!(
            r.contains("aead rfc4106(gcm(aes)) 0x<key> (160 bits) 128"),
            "{r}"
        );
        assert!(
            r.contains("spi 0x00001234"),
            "only key lines are touched: {r}"
        );
    }
}
