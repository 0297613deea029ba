//! The metadata carrier (`vpn_common::meta`): chosen when the XDP object is loaded, from what
//! the kernel's verifier says about `bpf_xdp_adjust_meta`, or forced by configuration.

use std::fmt;

use vpn_common::meta::{CARRIER_META, CARRIER_SHIM};

use crate::probe;

/// How the XDP programs hand `XdpMeta` to the AF_XDP workers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Carrier {
    /// The XDP metadata area (`bpf_xdp_adjust_meta`); per packet, the in-packet shim where a
    /// device refuses the helper at run time.
    Meta,
    /// An in-packet shim in front of the Ethernet header (`bpf_xdp_adjust_head`), stripped by
    /// the worker.
    Shim,
}

impl Carrier {
    /// The value of the object's `CARRIER` global.
    pub const fn global(self) -> u32 {
        match self {
            Carrier::Meta => CARRIER_META,
            Carrier::Shim => CARRIER_SHIM,
        }
    }

    /// Stable name (logs, `vpnctl probe --json`, benchmark records).
    pub const fn name(self) -> &'static str {
        match self {
            Carrier::Meta => "adjust_meta",
            Carrier::Shim => "shim",
        }
    }

    pub const ALL: [Carrier; 2] = [Carrier::Meta, Carrier::Shim];
}

impl fmt::Display for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the configuration asks for.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CarrierChoice {
    /// The metadata area where the verifier accepts `bpf_xdp_adjust_meta`, else the shim.
    #[default]
    Auto,
    Forced(Carrier),
}

impl std::str::FromStr for CarrierChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CarrierChoice::Auto),
            "adjust_meta" | "meta" => Ok(CarrierChoice::Forced(Carrier::Meta)),
            "shim" => Ok(CarrierChoice::Forced(Carrier::Shim)),
            _ => Err(format!(
                "metadata carrier {s:?}: expected \"auto\", \"adjust_meta\" or \"shim\""
            )),
        }
    }
}

/// The carrier and why it was chosen (vpnd logs this line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub carrier: Carrier,
    pub reason: String,
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.carrier {
            Carrier::Meta => "metadata area (bpf_xdp_adjust_meta)",
            Carrier::Shim => "in-packet shim (bpf_xdp_adjust_head)",
        };
        write!(f, "XDP metadata: {what} ({})", self.reason)
    }
}

/// The choice for `choice`, given the verifier's answer about `bpf_xdp_adjust_meta` (what
/// [`probe::bpf::xdp_adjust_meta`] returns, as text when refused).
pub fn decide(choice: CarrierChoice, meta_probe: Result<(), String>) -> Chosen {
    match (choice, meta_probe) {
        (CarrierChoice::Forced(c), Ok(())) => Chosen {
            carrier: c,
            reason: "set by configuration".into(),
        },
        (CarrierChoice::Forced(c), Err(why)) => Chosen {
            carrier: c,
            reason: format!("set by configuration; the kernel refuses bpf_xdp_adjust_meta: {why}"),
        },
        (CarrierChoice::Auto, Ok(())) => Chosen {
            carrier: Carrier::Meta,
            reason: "the verifier accepts bpf_xdp_adjust_meta; a device that refuses it at run \
                     time gets the shim per packet, counted as meta_refused_shim"
                .into(),
        },
        (CarrierChoice::Auto, Err(why)) => Chosen {
            carrier: Carrier::Shim,
            reason: format!("kernel refuses bpf_xdp_adjust_meta: {why}"),
        },
    }
}

/// [`decide`] with this kernel's answer.
pub fn choose(choice: CarrierChoice) -> Chosen {
    decide(
        choice,
        probe::bpf::xdp_adjust_meta().map_err(|r| r.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_verifier() {
        let refused = "program of this type cannot use helper bpf_xdp_adjust_meta#54 (Invalid \
                       argument (os error 22))";
        let c = decide(CarrierChoice::Auto, Err(refused.into()));
        assert_eq!(c.carrier, Carrier::Shim);
        assert_eq!(
            c.to_string(),
            format!(
                "XDP metadata: in-packet shim (bpf_xdp_adjust_head) (kernel refuses \
                 bpf_xdp_adjust_meta: {refused})"
            )
        );
        assert_eq!(decide(CarrierChoice::Auto, Ok(())).carrier, Carrier::Meta);
    }

    #[test]
    fn forced_wins_and_says_so() {
        let c = decide(CarrierChoice::Forced(Carrier::Meta), Err("no".into()));
        assert_eq!(c.carrier, Carrier::Meta);
        assert!(c.reason.contains("refuses"), "{}", c.reason);
        let c = decide(CarrierChoice::Forced(Carrier::Shim), Ok(()));
        assert_eq!(c.carrier, Carrier::Shim);
    }

    #[test]
    fn parses_every_name() {
        for (s, want) in [
            ("auto", CarrierChoice::Auto),
            ("adjust_meta", CarrierChoice::Forced(Carrier::Meta)),
            ("meta", CarrierChoice::Forced(Carrier::Meta)),
            ("shim", CarrierChoice::Forced(Carrier::Shim)),
        ] {
            assert_eq!(s.parse::<CarrierChoice>(), Ok(want));
        }
        assert!("Shim".parse::<CarrierChoice>().is_err());
    }

    #[test]
    fn globals_match_the_contract() {
        assert_eq!(Carrier::Meta.global(), CARRIER_META);
        assert_eq!(Carrier::Shim.global(), CARRIER_SHIM);
    }
}
