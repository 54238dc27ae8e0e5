//! WebSocket transport: the HTTP upgrade (path and `mqtt` subprotocol checks) and an adapter that
//! turns binary WebSocket frames into the byte stream the MQTT connection reads. MQTT packets may
//! be split across frames or packed several to a frame; the adapter does not care.

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols MQTT clients ask for, in our order of preference.
const MQTT_SUBPROTOCOLS: [&str; 3] = ["mqtt", "mqttv3.1", "mqttv5"];

/// Frames and messages are held whole in memory before we see them: past `max_message` bytes
/// tungstenite refuses them and the connection closes.
fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Largest WebSocket message of MQTT over WebSocket: one packet of `max_packet_size`, with room
/// for small packets a client coalesces into the same message.
pub(crate) fn mqtt_message_limit(max_packet_size: u32) -> usize {
    max_packet_size as usize + (64 << 10)
}

/// Largest `ws-json` message: a payload of `max_packet_size` in base64, inside its JSON.
pub(crate) fn json_message_limit(max_packet_size: u32) -> usize {
    max_packet_size as usize * 2 + (64 << 10)
}

fn not_found() -> ErrorResponse {
    let mut r = ErrorResponse::new(Some("not found".into()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// Accepts the upgrade for MQTT over WebSocket at `path`.
pub(crate) async fn accept<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<WsByteStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The callback's error type is tungstenite's HTTP response; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| {
        if req.uri().path() != path {
            return Err(not_found());
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if let Some(p) = MQTT_SUBPROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
        {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(max_message)),
    )
    .await?;
    Ok(WsByteStream {
        inner: ws,
        pending: Bytes::new(),
    })
}

/// Accepts the upgrade for the JSON bridge at `path`; returns the request's query string.
pub(crate) async fn accept_json<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<(WebSocketStream<S>, String), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut query = String::new();
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        if req.uri().path() != path {
            return Err(not_found());
        }
        query = req.uri().query().unwrap_or_default().to_string();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(max_message)),
    )
    .await?;
    Ok((ws, query))
}

/// MQTT's view of a WebSocket: a byte stream over binary frames.
pub struct WsByteStream<S> {
    inner: WebSocketStream<S>,
    /// The rest of the last binary frame not yet handed to the reader.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket requires binary frames",
                    )))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
