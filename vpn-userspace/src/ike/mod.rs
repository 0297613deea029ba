//! IKEv2 (RFC 7296) with pre-shared keys: the message codec, the key schedule and the
//! sans-IO protocol core that `vpnd` drives from a tokio UDP shell.

pub mod conn;
pub mod crypto;
pub mod endpoint;
pub mod limits;
pub mod plane;
pub mod proposal;
pub mod shell;
pub mod ts;
pub mod wire;

#[cfg(test)]
mod tests;
