//! vpnd's control socket: each line of the input is a request line as a client sends it,
//! parsed as the listener does (`control::parse_request`) and answered by the IKE shell's
//! dispatcher (`Shell::control`) over an endpoint with two connections (one initiating).
//! Every request either parses to something that serialises back to itself or gets a "bad
//! request" answer; every answer serialises (what the listener writes back).

#![no_main]

mod common;

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vpn_userspace::{
    control::{Request, parse_request},
    ike::{
        conn::Initiator,
        endpoint::{ChildId, ChildSa, ConnId, Endpoint, Settings},
        shell::{ChildUsage, SaSink, Shell},
    },
};

/// Takes every SA and reports no traffic.
struct NoPlane;

impl SaSink for NoPlane {
    fn install_inbound(&mut self, _: ChildSa) -> anyhow::Result<()> {
        Ok(())
    }
    fn activate_outbound(&mut self, _: ConnId, _: ChildId) -> anyhow::Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: ConnId, _: ChildId) -> anyhow::Result<()> {
        Ok(())
    }
    fn usage(&self, _: ChildId) -> Option<ChildUsage> {
        None
    }
}

static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

/// A fresh shell per input, so that a crash reproduces from its input alone.
fn shell() -> Shell<NoPlane> {
    let mut ep = Endpoint::new(Settings::default());
    let a = common::A;
    let b = common::B;
    ep.add_conn(common::conn(
        "east-west",
        a,
        b,
        "aes128gcm16",
        Initiator::BiDirectional,
    ));
    ep.add_conn(common::conn(
        "west",
        a,
        b,
        "aes256gcm16-esn",
        Initiator::ResponseOnly,
    ));
    Shell::unbound(ep, NoPlane).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut rt = RUNTIME.lock().unwrap();
    let rt = rt.get_or_insert_with(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    });
    let mut shell = shell();
    for line in String::from_utf8_lossy(data).split('\n').take(16) {
        let resp = match parse_request(line) {
            Ok(req) => {
                let text = serde_json::to_string(&req).unwrap();
                assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);
                rt.block_on(shell.control(req))
            }
            Err(resp) => {
                assert!(!resp.ok && resp.error.as_deref().unwrap().starts_with("bad request"));
                resp
            }
        };
        serde_json::to_vec(&resp).unwrap();
        // What the requests queued (IKE_SA_INIT, DELETE, rekeys) goes nowhere.
        while shell.ep.poll_transmit().is_some() {}
        while shell.ep.poll_event().is_some() {}
    }
});
