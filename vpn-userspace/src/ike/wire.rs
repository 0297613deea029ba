//! IKEv2 message codec (placeholder, being written).
