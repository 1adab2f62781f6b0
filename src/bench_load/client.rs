//! The HTTP side of the load generator: a pooled plain-HTTP/1.1 client (hyper-util;
//! no TLS, so `http://` URLs only), the model lookup (`GET /v1/models`) and one
//! streamed request measured into a [`RequestRecord`].
//!
//! Invariants: [`send_streaming`] never fails and never runs longer than its
//! timeout: every failure (connect, HTTP status, error frame, a stream that ends
//! without `[DONE]`, timeout) becomes the record's `error`; the clock starts just
//! before the request is handed to the client, so TTFT includes connecting.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::sse::{classify, clip, Chunk, SseParser};
use super::stats::RequestRecord;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The server's base URL, `http://host:port` (a trailing `/` or `/v1` is dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl> {
        let trimmed = url.trim().trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        if trimmed.starts_with("https://") {
            bail!("{url}: only plain http:// URLs are supported (the load generator has no TLS)");
        }
        if !trimmed.starts_with("http://") {
            bail!("{url}: expected a URL such as http://127.0.0.1:8000");
        }
        let uri: Uri = trimmed
            .parse()
            .with_context(|| format!("{url}: not a valid URL"))?;
        if uri.host().is_none() {
            bail!("{url}: the URL has no host");
        }
        Ok(BaseUrl(trimmed.to_string()))
    }

    pub fn join(&self, path: &str) -> Result<Uri> {
        format!("{}{path}", self.0)
            .parse()
            .with_context(|| format!("bad URL {}{path}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The first model id `GET /v1/models` lists.
pub async fn first_model(client: &HttpClient, base: &BaseUrl) -> Result<String> {
    let uri = base.join("/v1/models")?;
    let req = Request::get(uri.clone()).body(Full::new(Bytes::new()))?;
    let fetch = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .map_err(|_| anyhow!("GET {uri}: no answer within 30 s"))?
        .with_context(|| format!("GET {uri}"))?;
    if status != StatusCode::OK {
        bail!(
            "GET {uri}: HTTP {status}: {}",
            clip(&String::from_utf8_lossy(&body))
        );
    }
    let v: Value = serde_json::from_slice(&body).with_context(|| format!("GET {uri}: not JSON"))?;
    v.get("data")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("GET {uri}: the server lists no model; pass --model"))
}

/// Sends one streaming request and measures it. `t0` is the run's start.
pub async fn send_streaming(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
    index: usize,
    t0: Instant,
    timeout: Duration,
) -> RequestRecord {
    let sent = Instant::now();
    let mut rec = RequestRecord {
        index,
        start_s: sent.duration_since(t0).as_secs_f64(),
        ..RequestRecord::default()
    };
    let outcome = tokio::time::timeout(timeout, measure(client, uri, body, sent, &mut rec)).await;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("timed out after {} s", timeout.as_secs_f64())),
    };
    rec.e2e_ms = Some(ms(sent.elapsed()));
    if error.is_some() {
        rec.error = error;
    }
    rec
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
    sent: Instant,
    rec: &mut RequestRecord,
) -> std::result::Result<(), String> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(body))
        .map_err(|e| format!("build request: {e}"))?;
    let resp: Response<Incoming> = client
        .request(req)
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        let text = match body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(format!("HTTP {}: {}", status.as_u16(), clip(&msg)));
    }
    let mut parser = SseParser::default();
    let mut last_content: Option<Instant> = None;
    let mut usage_tokens: Option<u64> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("stream broke: {}", error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        for payload in parser.push(&data) {
            match classify(&payload) {
                Chunk::Done => {
                    rec.output_tokens = usage_tokens.unwrap_or(rec.content_chunks);
                    return if rec.content_chunks == 0 {
                        Err("the stream carried no tokens".into())
                    } else {
                        Ok(())
                    };
                }
                Chunk::Error(e) => return Err(e),
                Chunk::Data {
                    content,
                    completion_tokens,
                    prompt_tokens,
                } => {
                    if content {
                        match last_content {
                            None => rec.ttft_ms = Some(ms(now.duration_since(sent))),
                            Some(prev) => rec.itl_ms.push(ms(now.duration_since(prev))),
                        }
                        last_content = Some(now);
                        rec.content_chunks += 1;
                    }
                    usage_tokens = completion_tokens.or(usage_tokens);
                    rec.prompt_tokens = prompt_tokens.or(rec.prompt_tokens);
                }
            }
        }
    }
    rec.output_tokens = usage_tokens.unwrap_or(rec.content_chunks);
    Err("the stream ended without [DONE]".into())
}

/// `e: cause: cause` for errors whose Display hides their source (hyper's).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_normalises_and_rejects_tls() {
        let b = BaseUrl::parse("http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!(b.as_str(), "http://127.0.0.1:8000");
        assert_eq!(
            b.join("/v1/completions").unwrap().to_string(),
            "http://127.0.0.1:8000/v1/completions"
        );
        assert_eq!(
            BaseUrl::parse("http://localhost:9").unwrap().as_str(),
            "http://localhost:9"
        );
        let tls = BaseUrl::parse("https://example.invalid").unwrap_err();
        assert!(tls.to_string().contains("plain http://"), "{tls}");
        assert!(BaseUrl::parse("localhost:8000").is_err());
        assert!(BaseUrl::parse("http://").is_err());
    }
}
