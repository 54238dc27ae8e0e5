//! The one error of the codec: why bytes are not a valid packet, and the v5 reason code the
//! connection closes with.

use super::ReasonCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length is not a valid variable byte integer")]
    MalformedRemainingLength,
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    PacketTooLarge(usize),
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags for packet type {0}")]
    InvalidHeaderFlags(u8),
    #[error("the first packet must be CONNECT")]
    FirstPacketNotConnect,
    #[error("a second CONNECT on the same connection")]
    SecondConnect,
    #[error("packet type {0} is not valid in this protocol version or direction")]
    UnexpectedPacket(u8),
    #[error("packet content is shorter than its declared length")]
    Truncated,
    #[error("unexpected bytes after the end of the packet")]
    TrailingBytes,
    #[error("string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    #[error("unknown protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("reserved bit set in CONNECT flags")]
    ReservedConnectFlag,
    #[error("will QoS or retain set without a will, or will QoS 3")]
    InvalidWillFlags,
    #[error("password present without a user name (MQTT 3.1.1)")]
    PasswordWithoutUsername,
    #[error("QoS 3 is not a valid QoS")]
    InvalidQos,
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQos0,
    #[error("packet identifier 0")]
    ZeroPacketId,
    #[error("topic name contains a wildcard or is invalid")]
    InvalidTopicName,
    #[error("payload is not UTF-8 although the payload format indicator says so")]
    PayloadFormatInvalid,
    #[error("SUBSCRIBE or UNSUBSCRIBE without any topic filter")]
    NoTopicFilters,
    #[error("reserved bits set in subscription options")]
    InvalidSubscriptionOptions,
    #[error("return code 0x{0:02X} is not one MQTT 3.1.1 allows here")]
    InvalidReturnCode(u8),
    #[error("property 0x{0:02X} is not allowed here")]
    InvalidProperty(u8),
    #[error("property 0x{0:02X} appears more than once")]
    DuplicateProperty(u8),
    #[error("property 0x{0:02X} has an invalid value")]
    InvalidPropertyValue(u8),
}

impl DecodeError {
    /// The reason code a v5 DISCONNECT (or CONNACK) carries for this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge(_) => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            InvalidTopicName => ReasonCode::TOPIC_NAME_INVALID,
            PayloadFormatInvalid => ReasonCode::PAYLOAD_FORMAT_INVALID,
            FirstPacketNotConnect
            | SecondConnect
            | UnexpectedPacket(_)
            | ZeroPacketId
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | PasswordWithoutUsername
            | DupOnQos0
            | NoTopicFilters => ReasonCode::PROTOCOL_ERROR,
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}
