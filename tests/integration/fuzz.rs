//! Fuzzing keyward's gRPC surface through the real server stack (codec, limits, handlers,
//! database): every RPC of every service gets request bodies made of arbitrary bytes, and
//! ext_authz `Check` gets arbitrary HTTP header maps.
//!
//! The contract under test: every answer is a gRPC status among OK, INVALID_ARGUMENT,
//! UNAUTHENTICATED, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED and
//! ALREADY_EXISTS (never INTERNAL, UNKNOWN or a transport failure, and never a hang); every
//! INVALID_ARGUMENT carries a `google.rpc.BadRequest` field violation; `Check` answers OK with an
//! allow or a deny inside and allows only a valid token; the server still serves afterwards.
//!
//! Inputs come from an RNG with a fixed seed, so a run is reproducible and a failure prints the
//! RPC and the request body in hex. A longer campaign:
//!
//! ```text
//! KEYWARD_FUZZ_CASES=2000 cargo test --test integration fuzz -- --nocapture
//! KEYWARD_FUZZ_SEED=12345 KEYWARD_FUZZ_CASES=2000 cargo test --test integration fuzz
//! ```
//!
//! `KEYWARD_FUZZ_CASES` is the number of bodies per RPC (default 12, so about 430 requests)
//! and of header maps for `Check` (default 12 × 16); `KEYWARD_FUZZ_SEED` (a u64) picks other
//! inputs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use keyward::domain::paging::{self, Cursor};
use keyward::grpc::pb::org_service_client::OrgServiceClient;
use keyward::grpc::pb::CreateOrgRequest;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use crate::harness::*;

const DEFAULT_SEED: u64 = 0x6b65_7977_6172_6404;
const DEFAULT_CASES: usize = 12;
/// Longest any single call may take before it counts as a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The codes a request, however malformed, may get.
const ALLOWED: [Code; 8] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::Unauthenticated,
    Code::NotFound,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::AlreadyExists,
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    env_or("KEYWARD_FUZZ_SEED", DEFAULT_SEED)
}

fn cases() -> usize {
    env_or("KEYWARD_FUZZ_CASES", DEFAULT_CASES)
}

/// Sends and receives message bodies as they are: no protobuf on the client side.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut body = vec![0; src.remaining()];
        src.copy_to_slice(&mut body);
        Ok(Some(body))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Sends `body` to `path` as it is, with `authorization` metadata when given.
async fn raw_call(
    app: &TestApp,
    path: &str,
    body: Vec<u8>,
    authorization: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization.and_then(|v| v.parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    let path = PathAndQuery::try_from(path.to_string()).expect("a valid path");
    grpc.unary(request, path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

// --- protobuf-looking bodies ---------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_len(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What the fuzzer knows of the running keyward: real ids, and strings that mean something.
struct Known {
    user_id: String,
    org_id: String,
    strings: Vec<String>,
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max);
    (0..len).map(|_| rng.gen()).collect()
}

/// A string field's content: plausible values, edge cases, or bytes that are not UTF-8.
fn string_value(rng: &mut StdRng, known: &Known) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0..=3 => known.strings[rng.gen_range(0..known.strings.len())]
            .clone()
            .into_bytes(),
        4 => {
            // Invalid UTF-8 somewhere in otherwise plausible text.
            let mut s = known.strings[rng.gen_range(0..known.strings.len())]
                .clone()
                .into_bytes();
            let at = rng.gen_range(0..=s.len());
            let bad: &[u8] = [
                &[0xff][..],
                &[0xc3],
                &[0xed, 0xa0, 0x80],
                &[0xf8, 0x88, 0x80],
            ][rng.gen_range(0..4)];
            s.splice(at..at, bad.iter().copied());
            s
        }
        5 => random_bytes(rng, 40),
        6 => {
            let len = [0usize, 1, 64, 65, 255, 256, 4096, 20_000][rng.gen_range(0..8)];
            let c = ["a", "Z", "\u{e9}", "\u{301}", " ", "\0", "\u{1f600}"][rng.gen_range(0..7)];
            c.repeat(len).into_bytes()
        }
        7 => {
            // A page token for any cursor (tokens carry no signature), for the filters of
            // ListMyOrgs, or for none.
            let at_millis = [i64::MIN, -1, 0, i64::MAX, rng.gen()][rng.gen_range(0..5)];
            let id = ["0", &known.user_id, "\u{ffff}", "|", "{\"$gt\":\"\"}"][rng.gen_range(0..5)];
            let filters = [
                format!("my_orgs;user={}", known.user_id),
                format!("members;org={};role=", known.org_id),
                String::new(),
            ][rng.gen_range(0..3)]
            .clone();
            paging::encode(
                &Cursor {
                    at_millis,
                    id: id.to_string(),
                },
                &filters,
            )
            .into_bytes()
        }
        _ => {
            let chars: Vec<char> =
                "aB0@.-_|${\0\t\n\u{7f}\u{a0}\u{301}\u{130}\u{202e}\u{feff}\u{fffd}\u{10ffff}"
                    .chars()
                    .collect();
            let len = rng.gen_range(0..40);
            (0..len)
                .map(|_| chars[rng.gen_range(0..chars.len())])
                .collect::<String>()
                .into_bytes()
        }
    }
}

fn varint_value(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..8) {
        0..=2 => rng.gen_range(0..7),
        3 => u64::MAX, // -1 as int32/int64: ten bytes
        4 => i32::MAX as u64,
        5 => (i32::MIN as i64) as u64, // negative int32
        6 => i64::MAX as u64,
        _ => rng.gen(),
    }
}

/// A message that looks like protobuf: known-ish field numbers, every wire type (also the
/// deprecated group and invalid ones), nested messages, bytes that are not UTF-8.
fn message(rng: &mut StdRng, known: &Known, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(0..7) {
        let field = match rng.gen_range(0..20) {
            0 => 0,                         // invalid field number
            1 => rng.gen_range(9..100_000), // unknown field
            2 => (1 << 29) - 1,             // largest field number
            _ => rng.gen_range(1..9),
        };
        match rng.gen_range(0..20) {
            0..=5 => {
                put_key(&mut out, field, 0);
                put_varint(&mut out, varint_value(rng));
            }
            6..=12 => put_len(&mut out, field, &string_value(rng, known)),
            13..=15 if depth < 4 => {
                let inner = message(rng, known, depth + 1);
                put_len(&mut out, field, &inner);
            }
            16 => {
                put_key(&mut out, field, 1);
                out.extend_from_slice(&rng.gen::<u64>().to_le_bytes());
            }
            17 => {
                put_key(&mut out, field, 5);
                out.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
            }
            18 => {
                // Start and end group, or one without the other.
                put_key(&mut out, field, 3);
                if rng.gen() {
                    put_key(&mut out, field, 4);
                }
            }
            _ => {
                // Invalid wire types 6 and 7, or a length past the end of the message.
                if rng.gen() {
                    put_key(&mut out, field, rng.gen_range(6..8));
                } else {
                    put_key(&mut out, field, 2);
                    put_varint(
                        &mut out,
                        [1 << 31, u64::MAX, 1 << 20, 65][rng.gen_range(0..4)],
                    );
                    out.extend_from_slice(b"short");
                }
            }
        }
    }
    out
}

// --- well-typed bodies, from keyward's own descriptor set ------------------------------------

/// keyward's messages and RPCs, read from the descriptor set the reflection service serves.
struct Schema {
    /// Message descriptors by fully-qualified name (`.keyward.v1.LoginRequest`).
    messages: HashMap<String, DescriptorProto>,
    /// (path, input type) of every RPC of every keyward service.
    rpcs: Vec<(String, String)>,
}

impl Schema {
    fn load() -> Self {
        let set = FileDescriptorSet::decode(keyward::grpc::pb::FILE_DESCRIPTOR_SET)
            .expect("keyward's descriptor set decodes");
        let mut messages = HashMap::new();
        let mut rpcs = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                messages.insert(format!(".{package}.{}", message.name()), message.clone());
            }
            for service in &file.service {
                for method in &service.method {
                    rpcs.push((
                        format!("/{package}.{}/{}", service.name(), method.name()),
                        method.input_type().to_string(),
                    ));
                }
            }
        }
        Self { messages, rpcs }
    }

    /// A message of type `name` that decodes: each field with its own wire type, strings in
    /// UTF-8, any values (enums and integers out of range, empty and huge strings, ...).
    fn typed(&self, rng: &mut StdRng, name: &str, known: &Known, depth: u32) -> Vec<u8> {
        let mut out = Vec::new();
        if name == ".google.protobuf.Timestamp" {
            // Seconds and nanos, in range or not.
            if rng.gen() {
                put_key(&mut out, 1, 0);
                put_varint(&mut out, varint_value(rng));
            }
            if rng.gen() {
                put_key(&mut out, 2, 0);
                put_varint(&mut out, varint_value(rng));
            }
            return out;
        }
        let Some(message) = self.messages.get(name) else {
            return message(rng, known, depth);
        };
        for field in &message.field {
            if rng.gen_range(0..4) == 0 {
                continue;
            }
            let repeats = if field.label() == Label::Repeated {
                rng.gen_range(0..4)
            } else {
                1
            };
            let number = field.number() as u64;
            for _ in 0..repeats {
                match field.r#type() {
                    Type::String => put_len(&mut out, number, &text_value(rng, known)),
                    Type::Bytes => put_len(&mut out, number, &random_bytes(rng, 40)),
                    Type::Message if depth < 4 => {
                        let inner = self.typed(rng, field.type_name(), known, depth + 1);
                        put_len(&mut out, number, &inner);
                    }
                    Type::Message => put_len(&mut out, number, &[]),
                    Type::Bool => {
                        put_key(&mut out, number, 0);
                        put_varint(&mut out, [0, 1, 2, u64::MAX][rng.gen_range(0..4)]);
                    }
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                        put_key(&mut out, number, 1);
                        out.extend_from_slice(&rng.gen::<u64>().to_le_bytes());
                    }
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                        put_key(&mut out, number, 5);
                        out.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
                    }
                    // Enums and the integer kinds.
                    _ => {
                        put_key(&mut out, number, 0);
                        put_varint(&mut out, varint_value(rng));
                    }
                }
            }
        }
        out
    }
}

/// A string field's content that is valid UTF-8.
fn text_value(rng: &mut StdRng, known: &Known) -> Vec<u8> {
    loop {
        let value = string_value(rng, known);
        if std::str::from_utf8(&value).is_ok() {
            return value;
        }
    }
}

/// One change that makes a well-typed body malformed, or not.
fn corrupt(rng: &mut StdRng, mut body: Vec<u8>) -> Vec<u8> {
    match rng.gen_range(0..5) {
        0 if !body.is_empty() => {
            let at = rng.gen_range(0..body.len());
            body[at] = rng.gen();
        }
        1 => {
            let keep = rng.gen_range(0..=body.len());
            body.truncate(keep);
        }
        2 => body.extend(random_bytes(rng, 16)),
        3 => {
            // An unknown field, which decoders skip.
            put_len(&mut body, rng.gen_range(20..1000), b"unknown");
        }
        _ => {
            // A well-typed field repeated with an invalid UTF-8 string.
            put_len(&mut body, rng.gen_range(1..6), &[b'a', 0xff, 0xfe]);
        }
    }
    body
}

/// One request body of the fuzz mix for a request of type `input` (None: unknown type).
fn body(rng: &mut StdRng, schema: &Schema, input: Option<&str>, known: &Known) -> Vec<u8> {
    match (rng.gen_range(0..20), input) {
        // Well-typed, so the handler itself runs.
        (0..=7, Some(input)) => schema.typed(rng, input, known, 0),
        // Well-typed, then one thing broken (or an unknown field added).
        (8..=10, Some(input)) => {
            let body = schema.typed(rng, input, known, 0);
            corrupt(rng, body)
        }
        // Random bytes, short or long.
        (11..=13, _) => {
            let max = [8, 64, 1024][rng.gen_range(0..3)];
            random_bytes(rng, max)
        }
        // Protobuf-looking prefix, then garbage.
        (14..=15, _) => {
            let mut b = message(rng, known, 0);
            b.extend(random_bytes(rng, 48));
            b
        }
        // Protobuf-looking, cut short.
        (16, _) => {
            let mut b = message(rng, known, 0);
            let keep = rng.gen_range(0..=b.len());
            b.truncate(keep);
            b
        }
        // Over the 64 KiB request limit.
        (17, _) if rng.gen_range(0..3) == 0 => {
            let mut b = Vec::new();
            put_len(&mut b, 1, &vec![b'a'; 70 * 1024]);
            b
        }
        // Protobuf-looking: every wire type, invalid ones too.
        _ => message(rng, known, 0),
    }
}

/// What to send as `authorization` for one request.
fn authorization(rng: &mut StdRng, path: &str, tokens: &[String]) -> Option<String> {
    // Logout and ChangePassword could end the sessions the other requests use.
    let real_allowed = !path.ends_with("/Logout") && !path.ends_with("/ChangePassword");
    match rng.gen_range(0..8) {
        0..=1 => None,
        2..=4 if real_allowed => Some(format!("Bearer {}", tokens[rng.gen_range(0..tokens.len())])),
        5 => Some(
            [
                "Bearer",
                "Bearer ",
                "bearer  x",
                "Basic dXNlcjpwYXNz",
                "Bearer v4.public.AAAA",
            ][rng.gen_range(0..5)]
            .to_string(),
        ),
        _ => {
            let len = rng.gen_range(0..80);
            let junk: String = (0..len).map(|_| rng.gen_range(' '..='~')).collect();
            Some(format!("Bearer {junk}"))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.len() <= 512 {
        hex::encode(bytes)
    } else {
        format!("{}… ({} bytes)", hex::encode(&bytes[..512]), bytes.len())
    }
}

/// What is wrong with one answer, if anything.
fn judge(path: &str, answer: &Result<Vec<u8>, Status>) -> Option<String> {
    match answer {
        Ok(response) if path == CHECK => {
            let Ok(r) = CheckResponse::decode(response.as_slice()) else {
                return Some("the CheckResponse does not decode".into());
            };
            let code = r.status.as_ref().map_or(0, |s| s.code);
            let allowed = matches!(r.http_response, Some(HttpResponse::OkResponse(_)));
            // No raw body holds a valid bearer token, so nothing may be allowed.
            (code == 0 || allowed)
                .then(|| format!("Check allowed a request without a token: {r:?}"))
        }
        Ok(_) => None,
        Err(status) if !ALLOWED.contains(&status.code()) => Some(format!(
            "{:?}: {:?} (source: {:?})",
            status.code(),
            status.message(),
            std::error::Error::source(status)
        )),
        Err(status) if status.code() == Code::InvalidArgument && violations(status).is_empty() => {
            Some(format!(
                "INVALID_ARGUMENT without a field violation: {:?} reason {}",
                status.message(),
                reason(status)
            ))
        }
        Err(_) => None,
    }
}

/// The server still answers: health, and a fresh account registers and signs in.
async fn assert_still_serving(app: &TestApp) {
    let health = app
        .health()
        .check(tonic_health::pb::HealthCheckRequest {
            service: "keyward.v1.AuthService".into(),
        })
        .await
        .expect("health answers")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let pair = app.signed_in(&email("after-fuzz")).await;
    app.authenticate(&pair.access_token)
        .await
        .expect("a fresh token authenticates");
}

async fn fuzz_app() -> TestApp {
    TestApp::start_with_config(|c| {
        c.registrations_per_address_per_hour = 0;
        c.login_attempts_per_address_per_minute = 0;
        c.code_requests_per_address_per_minute = 0;
    })
    .await
}

#[tokio::test]
async fn every_rpc_survives_arbitrary_request_bytes() {
    let (seed, cases) = (seed(), cases());
    let app = fuzz_app().await;
    let started = Instant::now();

    // Real identities, so some requests get past authentication.
    let user = app.signed_in(&email("fuzz-user")).await;
    let (_, admin) = crate::users::with_role(&app, &email("fuzz-admin"), "super_admin").await;
    let org = OrgServiceClient::new(app.channel())
        .create_org(bearer(
            CreateOrgRequest {
                name: "Fuzz Org".into(),
                ..Default::default()
            },
            &user.access_token,
        ))
        .await
        .expect("create org")
        .into_inner()
        .organization
        .unwrap();
    let user_id = user.user.as_ref().unwrap().id.clone();
    let known = Known {
        strings: vec![
            String::new(),
            email("fuzz-new"),
            user.user.as_ref().unwrap().email.clone(),
            "UPPER@Example.COM".into(),
            "no-at-sign".into(),
            "tangerine submarine orchestra 42".into(),
            PASSWORD.chars().rev().collect(),
            "short".into(),
            user_id.clone(),
            org.id.clone(),
            org.slug.clone(),
            "users.read".into(),
            "org.members.read".into(),
            "org.delete".into(),
            "https://example.com/".into(),
            "javascript:alert(1)".into(),
            "123456".into(),
            "000000".into(),
            user.access_token.clone(),
            format!("{}x", &user.access_token[..user.access_token.len() - 1]),
            "v4.public.e30".into(),
            "{\"$ne\":null}".into(),
            "$where".into(),
            "a.b.c".into(),
        ],
        user_id,
        org_id: org.id.clone(),
    };
    let tokens = [user.access_token.clone(), admin.access_token.clone()];

    let schema = Schema::load();
    let mut rpcs: Vec<(String, Option<String>)> = schema
        .rpcs
        .iter()
        .map(|(path, input)| (path.clone(), Some(input.clone())))
        .collect();
    assert!(rpcs.len() >= 35, "{rpcs:?}");
    rpcs.push((CHECK.to_string(), None));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut failures = Vec::new();
    let mut codes: HashMap<Code, usize> = HashMap::new();
    for (path, input) in &rpcs {
        let path = path.as_str();
        for case in 0..cases {
            let request = body(&mut rng, &schema, input.as_deref(), &known);
            let auth = if path == CHECK {
                None
            } else {
                authorization(&mut rng, path, &tokens)
            };
            let answer = tokio::time::timeout(
                CALL_DEADLINE,
                raw_call(&app, path, request.clone(), auth.as_deref()),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer: hang")));
            *codes
                .entry(answer.as_ref().map_or_else(|s| s.code(), |_| Code::Ok))
                .or_default() += 1;
            if let Some(problem) = judge(path, &answer) {
                failures.push(format!(
                    "{path} case {case} (authorization {auth:?}): {problem}\n  body: {}",
                    hex(&request)
                ));
            }
        }
    }
    let mut summary: Vec<_> = codes
        .into_iter()
        .map(|(c, n)| format!("{c:?}={n}"))
        .collect();
    summary.sort();
    eprintln!(
        "fuzz: seed {seed}, {cases} cases per RPC, {} RPCs in {:.1?}: {}",
        rpcs.len(),
        started.elapsed(),
        summary.join(" ")
    );
    assert_still_serving(&app).await;
    assert!(
        failures.is_empty(),
        "{} of {} requests broke the contract (seed {seed}):\n{}",
        failures.len(),
        rpcs.len() * cases,
        failures.join("\n")
    );
}

// --- ext_authz Check with arbitrary header maps --------------------------------------------

/// The token Check should act on: `authorization: <Bearer, any case> <token>`, trimmed — what
/// a correct gateway filter reads. Check may allow only when this is a valid token.
fn bearer_token(headers: &HashMap<String, String>) -> Option<String> {
    let (scheme, token) = headers.get("authorization")?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn header_name(rng: &mut StdRng) -> String {
    let names = [
        "authorization",
        "authorization",
        "Authorization",
        "AUTHORIZATION",
        "cookie",
        "x-keyward-user-id",
        "x-keyward-org-id",
        "x-keyward-role",
        "x-org",
        ":authority",
        "host",
        "",
        "\u{e9}t\u{e9}",
        "x\0y",
    ];
    if rng.gen_range(0..4) == 0 {
        let len = rng.gen_range(1..30);
        (0..len)
            .map(|_| rng.gen_range(b'!'..=b'~') as char)
            .collect()
    } else {
        names[rng.gen_range(0..names.len())].to_string()
    }
}

fn header_value(rng: &mut StdRng, valid: &[String], invalid: &[String]) -> String {
    let valid_token = &valid[rng.gen_range(0..valid.len())];
    let invalid_token = &invalid[rng.gen_range(0..invalid.len())];
    match rng.gen_range(0..16) {
        0 => format!("Bearer {valid_token}"),
        1 => format!("bearer  {valid_token} "),
        2 => format!("BEARER {valid_token}"),
        3 => format!("Bearer {invalid_token}"),
        4 => [
            "Bearer",
            "Bearer ",
            "bearer  x",
            "Bearer  ",
            "Basic YTpi",
            "Token x",
        ][rng.gen_range(0..6)]
        .to_string(),
        5 => format!(
            "{}{valid_token}{}",
            [
                "Bearer\t",
                "Bearer\u{a0}",
                "Bearer",
                "Bearer:",
                "",
                "Bearer  Bearer "
            ][rng.gen_range(0..6)],
            ["", "\0", " x", ",Bearer x", "\u{301}", "."][rng.gen_range(0..6)]
        ),
        6 => {
            // Flip one character of a valid token.
            let mut chars: Vec<char> = valid_token.chars().collect();
            let at = rng.gen_range(0..chars.len());
            chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
            format!("Bearer {}", chars.into_iter().collect::<String>())
        }
        7 => {
            // Huge: up to 16 KiB.
            let len = rng.gen_range(1..16 * 1024);
            format!("Bearer {}", "A".repeat(len))
        }
        8 => format!(
            "Bearer {}",
            "\u{1f600}\u{202e}\u{fffd}".repeat(rng.gen_range(1..50))
        ),
        9 => String::from_utf8_lossy(&random_bytes(rng, 64)).into_owned(),
        10 => format!("k=v; session={valid_token}"),
        _ => {
            let len = rng.gen_range(0..40);
            (0..len).map(|_| rng.gen_range(' '..='~')).collect()
        }
    }
}

fn check_request(
    headers: HashMap<String, String>,
    context: HashMap<String, String>,
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/things".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn ext_authz_check_survives_arbitrary_headers_and_allows_only_valid_tokens() {
    let (seed, cases) = (seed(), cases() * 16);
    let app = fuzz_app().await;
    let started = Instant::now();

    let live = app.signed_in(&email("fuzz-envoy")).await;
    let valid = vec![live.access_token.clone()];
    // A revoked session's token, and a token signed by a key keyward does not hold.
    let revoked = app.signed_in(&email("fuzz-envoy-revoked")).await;
    assert_eq!(app.logout(&revoked.access_token, false).await, 1);
    let (foreign_secret, _, _) = keyward::domain::tokens::generate_key();
    let foreign =
        keyward::domain::tokens::KeyRing::new(&foreign_secret, &[], "keyward", "keyward").unwrap();
    let (foreign_token, _) = foreign.issue(
        &keyward::domain::tokens::AccessClaims {
            user_id: live.user.as_ref().unwrap().id.clone(),
            session_id: live.session_id.clone(),
            email: live.user.as_ref().unwrap().email.clone(),
            role: keyward::domain::roles::Role::SuperAdmin,
            expires_at: chrono::Utc::now(),
            amr: vec!["pwd".into()],
            auth_time: chrono::Utc::now(),
            service_account: None,
        },
        chrono::Utc::now(),
        Duration::from_secs(600),
    );
    let invalid = vec![
        revoked.access_token.clone(),
        foreign_token,
        "v4.public.e30".to_string(),
        format!("{} ", live.refresh_token),
    ];

    let mut rng = StdRng::seed_from_u64(seed ^ 0x0e4a);
    let mut client = AuthorizationClient::new(app.channel());
    let (mut allowed, mut failures) = (0usize, Vec::new());
    let mut inner_codes: HashMap<i32, usize> = HashMap::new();
    for case in 0..cases {
        let mut headers = HashMap::new();
        for _ in 0..rng.gen_range(0..8) {
            headers.insert(
                header_name(&mut rng),
                header_value(&mut rng, &valid, &invalid),
            );
        }
        if rng.gen_range(0..3) == 0 {
            headers.insert(
                "authorization".into(),
                header_value(&mut rng, &valid, &invalid),
            );
        }
        let mut context = HashMap::new();
        if rng.gen_range(0..4) == 0 {
            let permission =
                ["users.read", "org.members.read", "", "no.such", "\u{0}"][rng.gen_range(0..5)];
            context.insert("permission".to_string(), permission.to_string());
        }
        if rng.gen_range(0..4) == 0 {
            context.insert("org_id_header".to_string(), header_name(&mut rng));
        }
        let expected = bearer_token(&headers);
        let request = check_request(headers.clone(), context.clone());
        let answer = tokio::time::timeout(CALL_DEADLINE, client.check(request.clone())).await;
        let problem = match answer {
            Err(_) => Some("no answer: hang".to_string()),
            Ok(Err(status)) => Some(format!(
                "gRPC error {:?}: {:?}",
                status.code(),
                status.message()
            )),
            Ok(Ok(response)) => {
                let r = response.into_inner();
                let code = r.status.as_ref().map_or(0, |s| s.code);
                *inner_codes.entry(code).or_default() += 1;
                let is_allow = matches!(r.http_response, Some(HttpResponse::OkResponse(_)));
                if is_allow {
                    allowed += 1;
                }
                if is_allow != (code == 0) {
                    Some(format!("status {code} disagrees with the decision: {r:?}"))
                } else if is_allow && expected.as_ref() != Some(&live.access_token) {
                    Some(format!("allowed without a valid bearer token: {r:?}"))
                } else if !is_allow && !matches!(code, 7 | 16) {
                    // 14 (UNAVAILABLE) is keyward failing to decide: a bug for these inputs.
                    Some(format!("denied with status {code}: {r:?}"))
                } else if !is_allow
                    && context.is_empty()
                    && expected.as_ref() == Some(&live.access_token)
                {
                    Some(format!("a valid token was denied: {r:?}"))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            let mut shown: Vec<_> = headers
                .iter()
                .map(|(k, v)| {
                    let v = if v.len() > 200 {
                        let head: String = v.chars().take(100).collect();
                        format!("{head}… ({} bytes)", v.len())
                    } else {
                        v.clone()
                    };
                    format!("{k:?}: {v:?}")
                })
                .collect();
            shown.sort();
            failures.push(format!(
                "case {case}: {problem}\n  headers: {{{}}}\n  context: {context:?}\n  body: {}",
                shown.join(", "),
                hex(&request.encode_to_vec())
            ));
        }
    }
    eprintln!(
        "fuzz Check: seed {seed}, {cases} header maps in {:.1?}: {allowed} allowed, inner codes {inner_codes:?}",
        started.elapsed()
    );
    assert!(
        allowed > 0,
        "no case was allowed: the generator never sent a valid token"
    );
    assert_still_serving(&app).await;
    assert!(
        failures.is_empty(),
        "{} of {cases} Check requests broke the contract (seed {seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One reproducer of each contract gap the fuzzer found (now closed): Check answered INTERNAL to
/// a body that is not a CheckRequest, and PAGE_TOKEN_INVALID carried no field violation.
#[tokio::test]
async fn gaps_found_by_fuzzing_stay_closed() {
    let app = fuzz_app().await;
    let user = app.signed_in(&email("fuzz-gap")).await;

    // Check with a body that is not a CheckRequest (a lone 0xff: an unfinished varint).
    let status = raw_call(&app, CHECK, vec![0xff], None).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!violations(&status).is_empty(), "{status:?}");

    // ListMyOrgs { page_token: "x" } from a signed-in user.
    let status = raw_call(
        &app,
        "/keyward.v1.OrgService/ListMyOrgs",
        vec![0x12, 0x01, b'x'],
        Some(&format!("Bearer {}", user.access_token)),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!violations(&status).is_empty(), "{status:?}");
}
