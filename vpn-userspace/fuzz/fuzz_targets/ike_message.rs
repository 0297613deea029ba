//! Every IKE parser on arbitrary bytes: the message walk, each payload body as a decrypted
//! chain and through every typed parser, and the decode/encode round trip (`exercise`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vpn_userspace::ike::wire::{
    Auth, Delete, Header, Id, Ke, Message, Notify, Payload, PayloadType, parse_chain, parse_sa,
    parse_ts,
};

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    if let Ok(msg) = Message::parse(data) {
        for p in &msg.payloads {
            let _ = parse_chain(p.next, p.body);
            let _ = parse_sa(p.body);
            let _ = Ke::parse(p.body);
            let _ = Id::parse(p.body).map(|id| id.body());
            let _ = Auth::parse(p.body);
            let _ = Notify::parse(p.body);
            let _ = Delete::parse(p.body);
            let _ = parse_ts(p.body);
            let _ = Payload::decode(p);
        }
        let _ = msg.find(PayloadType::SK);
    }
    vpn_userspace::ike::wire::exercise(data);
});
