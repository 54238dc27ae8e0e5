//! MQTT 5 enhanced authentication (spec 4.12) at CONNECT: the chain answers the CONNECT's
//! Authentication Method and Data; while the answering hook continues, the broker sends AUTH
//! (0x18, Continue Authentication) with its data and reads the client's AUTH, whose data goes
//! back to the same hook with the state it returned. All within the connect timeout and at
//! most [`MAX_ROUNDS`] challenges. Re-authentication (AUTH 0x19 on a live connection) is not
//! offered.

use super::ListenerContext;
use crate::hooks::{Admission, AuthStep, ConnectInfo};
use crate::protocol::*;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Challenges one CONNECT may take before it is refused.
pub const MAX_ROUNDS: usize = 8;

/// What the exchange ended with: attributes and CONNACK data, or a refusal to send.
pub(super) struct Admitted {
    pub attributes: Vec<(String, String)>,
    pub auth_data: Option<Bytes>,
}

/// Runs the chain for `req` (whose `auth` is set) and every AUTH round after it. `Err(None)`:
/// the client went away or broke the exchange badly enough that no CONNACK is owed.
pub(super) async fn exchange<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    ctx: &ListenerContext,
    mut req: ConnectInfo,
    deadline: Instant,
) -> Result<Admitted, Option<ReasonCode>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let broker = &ctx.broker;
    let mut admission = broker.hooks.admit(&req, ctx.allow_anonymous).await;
    for _ in 0..MAX_ROUNDS {
        let (hook, challenge) = match admission {
            Ok(Admission::Admit {
                attributes,
                auth_data,
            }) => {
                return Ok(Admitted {
                    attributes,
                    auth_data,
                })
            }
            Err(code) => return Err(Some(code)),
            Ok(Admission::Challenge { hook, challenge }) => (hook, challenge),
        };
        let Some(step) = req.auth.as_mut() else {
            return Err(Some(ReasonCode::NOT_AUTHORIZED));
        };
        let auth = Packet::Auth(Auth {
            code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some(step.method.clone()),
                authentication_data: Some(challenge.data),
                ..Properties::default()
            }
            .into(),
        });
        let mut out = BytesMut::new();
        encode_packet(&auth, ProtocolVersion::V5, &mut out);
        // Flushed (TLS and WebSocket may keep it buffered otherwise) and, like the answer,
        // within the authentication deadline.
        let sent = tokio::time::timeout_at(deadline, async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(None);
        }
        let answer = tokio::time::timeout_at(
            deadline,
            read_auth(stream, rbuf, broker.config.max_packet_size as usize),
        )
        .await;
        let data = match answer {
            Err(_) => return Err(None),
            Ok(Err(code)) => return Err(code),
            Ok(Ok(a)) => a,
        };
        match data {
            (Some(method), data) if method == step.method => {
                *step = AuthStep {
                    method,
                    data,
                    state: challenge.state,
                };
            }
            // Another method mid-exchange is a protocol error (spec 4.12.0-5).
            _ => return Err(Some(ReasonCode::PROTOCOL_ERROR)),
        }
        admission = broker.hooks.continue_auth(&hook, &req).await;
    }
    Err(Some(ReasonCode::NOT_AUTHORIZED))
}

/// The client's AUTH answer: its method and data. Anything else than AUTH with Continue
/// Authentication is a protocol error.
async fn read_auth<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<(Option<String>, Option<Bytes>), Option<ReasonCode>> {
    loop {
        match decode_packet(rbuf, Some(ProtocolVersion::V5), max_packet) {
            Ok(Some(Packet::Auth(a))) if a.code == ReasonCode::CONTINUE_AUTHENTICATION => {
                let p = a.properties;
                return Ok((
                    p.authentication_method.clone(),
                    p.authentication_data.clone(),
                ));
            }
            Ok(Some(_)) => return Err(Some(ReasonCode::PROTOCOL_ERROR)),
            Err(_) => return Err(Some(ReasonCode::MALFORMED_PACKET)),
            Ok(None) => {}
        }
        rbuf.reserve(super::connection::READ_MIN);
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}
