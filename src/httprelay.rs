//! Relaying one HTTP/1.1 request to a backend and its answer back, including protocol
//! upgrades (`101 Switching Protocols`: SPDY/3.1 and WebSocket streams of exec, attach
//! and port-forward). Shared by the API server's pod-subresource proxy (client → kubelet)
//! and the node agent's kubelet API (client → the container runtime's streaming server);
//! each caller dials its own backend and decides what to forward.
//!
//! Depends on: nothing in the crate (hyper and http only). Must not depend on: `store`,
//! `apiserver`, `agent`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, StatusCode, header::HeaderName};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The body of a relayed answer.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request headers that belong to one hop and are not forwarded to the backend, plus the
/// caller's credentials (`authorization`). The upgrade headers (`connection`, `upgrade`)
/// are kept: they are the point of relaying a stream.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "authorization"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
    )
}

/// A backend's answer as ours: status and headers as they came (less the framing ones),
/// body streamed; a `101 Switching Protocols` gets no body (the stream follows the
/// upgrade, see [`join_upgraded`]).
pub fn relay(resp: Response<Incoming>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut r = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        Response::new(Empty::new().boxed_unsync())
    } else {
        let stream = futures::stream::unfold(body, |mut b| async move {
            match b.frame().await {
                Some(Ok(f)) => Some((Ok::<_, Infallible>(f), b)),
                _ => None,
            }
        });
        Response::new(StreamBody::new(stream).boxed_unsync())
    };
    *r.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            r.headers_mut().append(name.clone(), value.clone());
        }
    }
    r
}

/// After the backend answered `101 Switching Protocols`: once both the client's and the
/// backend's connections are upgraded, copies bytes both ways until either side closes,
/// in a task of its own. `backend` names the backend in logs.
pub fn join_upgraded(client: OnUpgrade, upstream: OnUpgrade, backend: &'static str) {
    tokio::spawn(async move {
        match tokio::join!(client, upstream) {
            (Ok(client), Ok(upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(%err, backend, "relayed stream ended with an error");
                }
            }
            (c, u) => {
                tracing::warn!(client = ?c.err(), backend, upstream = ?u.err(), "upgrading the relayed stream failed")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers() {
        for (name, dropped) in [
            ("host", true),
            ("authorization", true),
            ("transfer-encoding", true),
            ("connection", false),
            ("upgrade", false),
            ("sec-websocket-protocol", false),
            ("x-stream-protocol-version", false),
        ] {
            assert_eq!(
                hop_by_hop(&HeaderName::from_static(name)),
                dropped,
                "{name}"
            );
        }
    }
}
