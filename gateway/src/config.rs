//! The gateway's configuration: one serde struct with defaults, which the binary
//! fills from flags and environment.
//!
//! Invariants: every field has a default that serves a single-machine deployment;
//! durations serialize as (fractional) seconds; `max_inflight == 0` means no
//! admission limit.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How model output is split into `reasoning_content` and `content`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningParser {
    /// Qwen3: `<think>…</think>` is reasoning, the rest is content.
    Qwen3,
}

impl std::str::FromStr for ReasoningParser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "qwen3" => Ok(ReasoningParser::Qwen3),
            other => Err(format!(
                "unknown reasoning parser {other:?}; supported: qwen3"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// When set, `/v1/*` requires `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Most generation requests in flight at once (HTTP requests, whatever their
    /// `n`); beyond it requests get 429. 0 = unlimited.
    pub max_inflight: usize,
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Per-request deadline, from arrival to the last token.
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Time a client has to send a request's headers on a connection, and then
    /// (separately) its whole body; a stalled body gets 408.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
    /// On shutdown: how long in-flight requests may take to finish before the
    /// server stops anyway.
    #[serde(with = "secs")]
    pub drain_timeout: Duration,
    /// Split `<think>` reasoning from the answer (`--reasoning-parser qwen3`).
    pub reasoning_parser: Option<ReasoningParser>,
    /// Most choices one request may ask for (`n` × number of prompts).
    pub max_choices: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            api_key: None,
            max_inflight: 1024,
            max_body_bytes: 8 << 20,
            request_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            reasoning_parser: None,
            max_choices: 128,
        }
    }
}

/// Durations as seconds (a float), the form people write in config files.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_fills_defaults() {
        let c: GatewayConfig =
            serde_json::from_str(r#"{"request_timeout": 1.5, "reasoning_parser": "qwen3"}"#)
                .expect("parse");
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.reasoning_parser, Some(ReasoningParser::Qwen3));
        assert_eq!(c.max_inflight, GatewayConfig::default().max_inflight);
        let back: GatewayConfig =
            serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        assert!(serde_json::from_str::<GatewayConfig>(r#"{"request_timeout": -1}"#).is_err());
    }

    #[test]
    fn reasoning_parser_from_str() {
        assert_eq!("qwen3".parse(), Ok(ReasoningParser::Qwen3));
        assert!("nope".parse::<ReasoningParser>().is_err());
    }
}
