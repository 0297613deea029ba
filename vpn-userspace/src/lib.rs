//! User space of the ESP forwarding plane: the data-plane loader and map writer, the AF_XDP
//! sockets, and (in later issues) IKE, ESP workers and the control API.

pub mod config;
pub mod control;
pub mod ctl;
pub mod dataplane;
pub mod esp;
pub mod ike;
pub mod nl;
pub mod pktgen;
pub mod probe;
pub mod seqstate;
pub mod vpnaas;
pub mod xfrm;
