//! Server-Sent Events as an OpenAI-compatible server streams them: an incremental
//! parser that takes body bytes in whatever pieces the network delivers and yields
//! the `data:` payload of each complete event, and [`classify`], which reads one
//! payload as a completion / chat chunk.
//!
//! Invariants: an event is yielded only once its blank-line terminator arrived (a
//! frame split anywhere, even inside a UTF-8 sequence or inside `\r\n`, parses the
//! same as a whole one); `\n`, `\r\n` and `\r` line ends are accepted; several
//! `data:` lines of one event are joined with `\n`; comments (`:`) and other fields
//! are ignored; the parser never panics on any input.

use serde_json::Value;

/// Buffers bytes until events are complete.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Data lines of the event being read.
    data: Vec<String>,
    /// The previous byte was `\r`; a `\n` right after it ends the same line.
    after_cr: bool,
}

impl SseParser {
    /// Feeds bytes; returns the data payloads of the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => self.buf.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(self.data.join("\n"));
                self.data.clear();
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("data:") {
            self.data
                .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
    }
}

/// What one `data:` payload says.
#[derive(Clone, Debug, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream's end.
    Done,
    /// An error frame (`{"error": {...}}`) or a payload that is not JSON.
    Error(String),
    Data {
        /// Some choice carries generated text (completion `text`, chat
        /// `delta.content` or `delta.reasoning_content`).
        content: bool,
        /// `usage.completion_tokens` / `usage.prompt_tokens` when this chunk has them.
        completion_tokens: Option<u64>,
        prompt_tokens: Option<u64>,
    },
}

pub fn classify(payload: &str) -> Chunk {
    let payload = payload.trim();
    if payload == "[DONE]" {
        return Chunk::Done;
    }
    let v: Value = match serde_json::from_str(payload) {
        Ok(v) => v,
        Err(e) => return Chunk::Error(format!("bad SSE chunk ({e}): {}", clip(payload))),
    };
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Chunk::Error(format!("error in stream: {msg}"));
    }
    let non_empty = |x: Option<&Value>| x.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let content = v
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|c| {
                let delta = c.get("delta");
                non_empty(c.get("text"))
                    || non_empty(delta.and_then(|d| d.get("content")))
                    || non_empty(delta.and_then(|d| d.get("reasoning_content")))
            })
        });
    let usage = v.get("usage").filter(|u| u.is_object());
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    Chunk::Data {
        content,
        completion_tokens: field("completion_tokens"),
        prompt_tokens: field("prompt_tokens"),
    }
}

/// At most 200 characters of `s`, for error messages.
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"index\":0,\"text\":\"Hel\"}],\"usage\":null}\n\n",
        ": keep-alive comment\n\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\"lo é\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    fn all_at_once(s: &[u8]) -> Vec<String> {
        SseParser::default().push(s)
    }

    #[test]
    fn whole_stream_parses_into_events() {
        let events = all_at_once(STREAM.as_bytes());
        assert_eq!(events.len(), 4);
        assert_eq!(events[3], "[DONE]");
        assert_eq!(
            events.iter().map(|e| classify(e)).collect::<Vec<_>>(),
            vec![
                Chunk::Data {
                    content: true,
                    completion_tokens: None,
                    prompt_tokens: None
                },
                Chunk::Data {
                    content: true,
                    completion_tokens: None,
                    prompt_tokens: None
                },
                Chunk::Data {
                    content: false,
                    completion_tokens: Some(2),
                    prompt_tokens: Some(5)
                },
                Chunk::Done,
            ]
        );
    }

    #[test]
    fn frames_split_at_every_byte_parse_the_same() {
        let want = all_at_once(STREAM.as_bytes());
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            assert_eq!(got, want, "split at {cut}");
        }
        let mut p = SseParser::default();
        let got: Vec<String> = bytes.iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(got, want, "byte by byte");
    }

    #[test]
    fn crlf_multiline_data_and_incomplete_tail() {
        let mut p = SseParser::default();
        let got = p.push(b"event: x\r\ndata: a\r\ndata:b\r\n\r\ndata: tail");
        assert_eq!(got, vec!["a\nb".to_string()]);
        // The tail is held until its terminator comes, split across `\r` and `\n`.
        assert!(p.push(b"\r").is_empty());
        assert_eq!(p.push(b"\n\r\n"), vec!["tail".to_string()]);
    }

    #[test]
    fn chat_chunks_and_errors() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
        let think = r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}"#;
        let fin = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        let content = |s: &str| matches!(classify(s), Chunk::Data { content: true, .. });
        assert!(!content(role) && content(text) && content(think) && !content(fin));
        let err = r#"{"error":{"message":"model overloaded","type":"server_error"}}"#;
        assert_eq!(
            classify(err),
            Chunk::Error("error in stream: model overloaded".into())
        );
        assert!(matches!(classify("{not json"), Chunk::Error(_)));
        assert_eq!(classify(" [DONE] "), Chunk::Done);
    }

    #[test]
    fn garbage_never_panics() {
        let mut p = SseParser::default();
        for chunk in [
            &b"\xff\xfe\r\r\n\n"[..],
            b"data:\xc3",
            b"\n\n",
            b"data: \n\n",
        ] {
            for e in p.push(chunk) {
                let _ = classify(&e);
            }
        }
        assert_eq!(clip(&"x".repeat(300)).chars().count(), 201);
    }
}
