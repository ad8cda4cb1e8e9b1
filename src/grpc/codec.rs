//! The protobuf codec of keyward's own services: prost, plus two guarantees at the edge.
//! - A request larger than the configured limit is refused with INVALID_ARGUMENT (and a field
//!   violation) before it is buffered: tonic reads the length prefix and refuses at once (its
//!   limit is `max_message_bytes`), and [`MessageLimitLayer`] gives that refusal keyward's
//!   error shape.
//! - A request prost cannot decode (say, invalid UTF-8 in a string field) gets INVALID_ARGUMENT
//!   naming the field, instead of tonic's INTERNAL.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::error::{Error, FieldViolation};

/// Largest message this process decodes. Set once by the server from `max_message_bytes`.
static MAX_MESSAGE_BYTES: AtomicUsize = AtomicUsize::new(1024 * 1024);

/// Sets the decode limit for every keyward service in this process.
pub fn set_max_message_bytes(limit: usize) {
    MAX_MESSAGE_BYTES.store(limit, Ordering::Relaxed);
}

/// prost with keyward's decode errors (see the module doc).
#[derive(Debug, Clone)]
pub struct KeywardCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KeywardCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KeywardCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KeywardDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeywardDecoder(PhantomData)
    }
}

/// See [`KeywardCodec`].
#[derive(Debug)]
pub struct KeywardDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for KeywardDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf;
        let limit = MAX_MESSAGE_BYTES.load(Ordering::Relaxed);
        let len = buf.remaining();
        if len > limit {
            buf.advance(len);
            return Err(Error::InvalidArgument(vec![FieldViolation::new(
                "",
                format!("request is {len} bytes; the limit is {limit} bytes"),
            )])
            .into());
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Error::InvalidArgument(vec![violation_of(&e)]).into())
    }
}

/// Gives tonic's own refusals of bad requests keyward's answer for them: INVALID_ARGUMENT with a
/// field violation, as every other invalid request gets. Two come from tonic rather than from
/// [`KeywardDecoder`]: an oversized message (OUT_OF_RANGE, from the length prefix, before the body
/// is read) and an undecodable body for a service generated with tonic's default codec (INTERNAL;
/// Envoy's ext_authz `Check`). Failures are trailers-only responses, so the status lives in the
/// headers and can be replaced there.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageLimitLayer;

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner }
    }
}

/// See [`MessageLimitLayer`].
#[derive(Clone, Debug)]
pub struct MessageLimit<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let code = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            // Percent-encoded on the wire, as every grpc-message is.
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(|m| m.replace("%20", " "))
                .unwrap_or_default();
            let violation = if code == "11" && message.contains("message length too large") {
                let limit = MAX_MESSAGE_BYTES.load(Ordering::Relaxed);
                Some(format!("request is too large; the limit is {limit} bytes"))
            } else if code == "13" && message.starts_with("failed to decode Protobuf message") {
                // Services whose generated code decodes with tonic's own codec (Envoy's
                // Authorization) answer INTERNAL to a body that is not their request.
                Some("request is not a valid protobuf message of this method".to_string())
            } else {
                None
            };
            if let Some(description) = violation {
                let status: Status =
                    Error::InvalidArgument(vec![FieldViolation::new("", description)]).into();
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                if let Err(e) = status.add_header(headers) {
                    tracing::warn!(error = %e, "could not rewrite an oversized-message status");
                }
            }
            Ok(response)
        })
    }
}

/// Turns prost's "Msg.field: Inner.field: what went wrong" into a field path and a description.
fn violation_of(err: &prost::DecodeError) -> FieldViolation {
    let text = err.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    let mut rest = text;
    while let Some((head, tail)) = rest.split_once(": ") {
        match head.split_once('.') {
            Some((message, field)) if !message.is_empty() && !field.contains(' ') => {
                path.push(field.to_string());
                rest = tail;
            }
            _ => break,
        }
    }
    // prost records the innermost field first.
    path.reverse();
    FieldViolation::new(path.join("."), rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_the_nested_field() {
        // RegisterRequest { organization (4): OrganizationSignup { name (1): [0xff] } }
        let bytes = [0x22, 0x03, 0x0a, 0x01, 0xff];
        let err = crate::grpc::pb::RegisterRequest::decode(&bytes[..]).unwrap_err();
        let v = violation_of(&err);
        assert_eq!(v.field, "organization.name");
        assert!(v.description.contains("UTF-8"), "{}", v.description);
    }
}
