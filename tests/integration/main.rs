//! keyward's integration tests: one binary, a real MongoDB-compatible server, keyward on
//! 127.0.0.1:0 and real gRPC clients (plus the real grpcurl and a second keyward process).

mod harness;
#[path = "../support/local_servers.rs"]
mod local_servers;

mod accounts;
mod bad_input;
mod cli;
mod ext_authz;
mod grpcurl;
mod lockout;
mod refresh;
mod replicas;
mod server;
mod sessions;
mod tokens;
