//! IKEv2 cryptography (placeholder, being written).
