//! `grpc` probes: `grpc.health.v1.Health/Check` over plaintext HTTP/2 (h2c) with tonic,
//! the two one-field protobuf messages encoded by hand. SERVING passes; anything else,
//! and every error, fails with upstream's wording.

use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::http::{PROBE_USER_AGENT, join_host_port};
use super::worker::Outcome;

/// The Check method of the standard health service.
const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Runs one health check against `host:port` for `service` ("" = the whole server).
pub async fn check(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(PROBE_USER_AGENT))
    {
        Ok(e) => e.connect_timeout(timeout),
        Err(e) => return Outcome::Error(format!("invalid gRPC address {addr:?}: {e}")),
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {addr:?} within {}: context deadline exceeded",
                go_duration(timeout)
            ));
        }
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at {addr:?}: {}",
                source_chain(&e)
            ));
        }
        Ok(Ok(c)) => c,
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(source_chain(&e)))?;
        let mut request = tonic::Request::new(encode_request(service));
        request.set_timeout(timeout);
        grpc.unary(
            request,
            http::uri::PathAndQuery::from_static(CHECK),
            RawCodec,
        )
        .await
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            ));
        }
        Ok(Err(status)) => return Outcome::Failure(rpc_failure(&status, timeout)),
        Ok(Ok(r)) => r.into_inner(),
    };
    match decode_status(&response) {
        Some(1) => Outcome::Success,
        Some(n) => Outcome::Failure(format!(
            "service unhealthy (responded with {:?})",
            status_name(n)
        )),
        None => {
            Outcome::Failure("error: health rpc probe failed: invalid HealthCheckResponse".into())
        }
    }
}

fn rpc_failure(status: &tonic::Status, timeout: Duration) -> String {
    match status.code() {
        tonic::Code::Unimplemented => {
            format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            )
        }
        tonic::Code::DeadlineExceeded => format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        ),
        code => format!(
            "error: health rpc probe failed: rpc error: code = {code:?} desc = {}",
            status.message()
        ),
    }
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A Go `time.Duration` string for whole-second and millisecond durations ("1s", "1m30s",
/// "500ms"), as upstream's messages print timeouts.
pub fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.is_zero() {
        return if d.is_zero() {
            "0s".into()
        } else {
            format!("{}ms", d.as_millis())
        };
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `HealthCheckRequest { string service = 1; }`.
fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(data: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = data.split_first()?;
        *data = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse { ServingStatus status = 1; }`: the status (0 when absent), or
/// None for bytes that are not a protobuf message.
fn decode_status(mut data: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !data.is_empty() {
        let key = get_varint(&mut data)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(&mut data)?,
            (_, 0) => {
                get_varint(&mut data)?;
            }
            (_, 1) => data = data.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(get_varint(&mut data)?).ok()?;
                data = data.get(len..)?;
            }
            (_, 5) => data = data.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn status_name(n: u64) -> String {
    match n {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// Passes already-encoded message bytes through tonic's framing.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    #[test]
    fn messages() {
        assert_eq!(encode_request(""), Vec::<u8>::new());
        assert_eq!(encode_request("db"), vec![0x0a, 2, b'd', b'b']);
        let long = "s".repeat(200);
        assert_eq!(&encode_request(&long)[..3], &[0x0a, 0xc8, 0x01]);
        let cases: &[(&[u8], Option<u64>)] = &[
            (&[], Some(0)),
            (&[0x08, 0x01], Some(1)),
            (&[0x08, 0x02], Some(2)),
            // Unknown fields are skipped.
            (&[0x12, 0x01, b'x', 0x08, 0x01, 0x1d, 0, 0, 0, 0], Some(1)),
            (&[0x08], None),
            (&[0x0f], None),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_status(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn durations() {
        for (d, want) in [
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(250), "250ms"),
        ] {
            assert_eq!(go_duration(d), want);
        }
    }

    /// A gRPC health server on h2c: `service` → status (absent = NOT_FOUND), or
    /// UNIMPLEMENTED for everything when `implemented` is false.
    async fn health_server(statuses: &'static [(&'static str, u8)], implemented: bool) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), CHECK);
                        assert!(
                            req.headers()["user-agent"]
                                .to_str()
                                .unwrap()
                                .starts_with(PROBE_USER_AGENT)
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let requested =
                            String::from_utf8_lossy(body.get(5..).unwrap_or_default()).into_owned();
                        let requested = requested.get(2..).unwrap_or("").to_string();
                        let builder =
                            hyper::Response::builder().header("content-type", "application/grpc");
                        let status = statuses
                            .iter()
                            .find(|(s, _)| *s == requested)
                            .map(|(_, st)| *st);
                        let resp = match (implemented, status) {
                            (false, _) => builder
                                .header("grpc-status", "12")
                                .header("grpc-message", "unknown service grpc.health.v1.Health")
                                .body(Full::new(Bytes::new()).boxed()),
                            (true, None) => builder
                                .header("grpc-status", "5")
                                .header("grpc-message", "unknown service")
                                .body(Full::new(Bytes::new()).boxed()),
                            (true, Some(st)) => {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                                builder.body(
                                    Full::new(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, st]))
                                        .with_trailers(async move {
                                            Some(Ok::<_, Infallible>(trailers))
                                        })
                                        .boxed(),
                                )
                            }
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn health_checks() {
        let port = health_server(&[("", 1), ("db", 2)], true).await;
        let t = Duration::from_secs(5);
        assert_eq!(check("127.0.0.1", port, "", t).await, Outcome::Success);
        assert_eq!(
            check("127.0.0.1", port, "db", t).await,
            Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        assert_eq!(
            check("127.0.0.1", port, "cache", t).await,
            Outcome::Failure(
                "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
                    .into()
            )
        );

        let port = health_server(&[], false).await;
        assert_eq!(
            check("127.0.0.1", port, "", t).await,
            Outcome::Failure("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown service grpc.health.v1.Health".into())
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match check("127.0.0.1", closed, "", t).await {
            Outcome::Failure(m) => assert!(
                m.starts_with(&format!(
                    "error: failed to connect service at \"127.0.0.1:{closed}\": "
                )),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
