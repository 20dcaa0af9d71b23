//! Skein's build orchestration and test infrastructure: `cargo xtask build-ebpf`,
//! `test`, `demo`, and the netns testbed that the privileged tests and the demo share.
//!
//! Layout:
//! - [`cluster`]: drives Skein through its CLI inside a testbed (cluster, endpoints).
//! - [`toolchain`]: installs what is missing (nightly rust-src, bpf-linker, Debian packages).
//! - [`testbed`]: RAII multi-host testbeds in network namespaces.
//! - [`scrape`]: reads an agent's `/metrics` from inside its host.
//! - [`dns_wire`]: DNS messages by hand, well-formed and malformed (DNS bench and tests).

pub mod cluster;
pub mod dns_wire;
pub mod scrape;
pub mod testbed;
pub mod toolchain;
