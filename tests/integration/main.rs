//! keyward's integration tests: one binary, a real MongoDB-compatible server, keyward on
//! 127.0.0.1:0 and real gRPC clients (plus the real grpcurl and a second keyward process).

mod clients;
mod harness;
#[path = "../support/local_servers.rs"]
mod local_servers;
#[path = "../support/oidc_providers.rs"]
mod oidc_providers;
#[path = "../support/smtp_sink.rs"]
mod smtp_sink;

mod account_claim;
mod accounts;
mod bad_input;
mod browser;
mod cli;
mod client_address;
mod crash;
mod ext_authz;
mod faults;
mod federation;
mod fuzz;
mod gateway;
mod gateway_hardening;
mod grpcurl;
mod import;
mod lockout;
mod metrics;
mod mfa;
mod observability;
mod oidc_fixture;
mod one_time_codes;
mod org_roles;
mod orgs;
mod permissions;
mod refresh;
mod replicas;
mod rest_fuzz;
mod server;
mod service_accounts;
mod sessions;
mod telemetry;
mod tokens;
mod users;
