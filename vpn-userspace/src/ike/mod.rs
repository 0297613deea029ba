//! IKEv2 (RFC 7296) with pre-shared keys: the message codec, the key schedule and the
//! sans-IO protocol core that `vpnd` drives from a tokio UDP shell.

pub mod crypto;
pub mod wire;
