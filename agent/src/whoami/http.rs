//! The HTTP side of `skein whoami`: the answer to every request, and the upload sink.

use std::{fmt::Write as _, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST},
    Method, Request, Response, StatusCode, Version,
};
use sha2::{Digest, Sha256};

use super::Whoami;

/// `POST` here streams the body through SHA-256 and answers its length and digest.
pub(crate) const UPLOAD_PATH: &str = "/upload";

impl Whoami {
    /// Answers one request from `remote`. An error (the client closed or stalled inside a
    /// body) ends the connection.
    pub(super) async fn answer(
        &self,
        remote: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (head, body) = request.into_parts();
        // HTTP/1.1 requires exactly one Host, HTTP/1.0 allows none (RFC 9112 §3.2).
        let hosts = head.headers.get_all(HOST).iter().count();
        if hosts > 1 || (hosts == 0 && head.version != Version::HTTP_10) {
            return Ok(bad_request());
        }
        let text = if head.method == Method::POST && head.uri.path() == UPLOAD_PATH {
            let (length, sha256) = digest(body).await?;
            format!(
                "{}RemoteAddr: {remote}\nLength: {length}\nSHA256: {sha256}\n",
                self.prefix
            )
        } else if let Some(counter) = &self.counter {
            discard(body).await?;
            return Ok(
                match counter
                    .hit(&self.identity.hostname, &remote.to_string())
                    .await
                {
                    Ok(text) => text_response(StatusCode::OK, text),
                    Err(error) => {
                        text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{:#}\n", error))
                    }
                },
            );
        } else {
            // The body is read and dropped, never held.
            discard(body).await?;
            self.echo(remote, &head)
        };
        Ok(text_response(StatusCode::OK, text))
    }

    /// The identity, the client's address, then the request line and headers.
    fn echo(&self, remote: SocketAddr, head: &hyper::http::request::Parts) -> String {
        let mut text = String::with_capacity(self.prefix.len() + 256);
        text.push_str(&self.prefix);
        let _ = writeln!(text, "RemoteAddr: {remote}");
        let _ = writeln!(text, "{} {} {:?}", head.method, head.uri, head.version);
        for (name, value) in &head.headers {
            let _ = writeln!(
                text,
                "{}: {}",
                title_case(name.as_str()),
                String::from_utf8_lossy(value.as_bytes())
            );
        }
        text
    }
}

/// Reads a body to its end, keeping nothing.
async fn discard(mut body: Incoming) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

/// The length of a body and its SHA-256 in lowercase hex, read as it streams in.
async fn digest(mut body: Incoming) -> Result<(u64, String), hyper::Error> {
    let (mut length, mut hasher) = (0u64, Sha256::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            length += data.len() as u64;
            hasher.update(&data);
        }
    }
    let hex = hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
    Ok((length, hex))
}

/// 400, and the connection closes after it.
fn bad_request() -> Response<Full<Bytes>> {
    let mut response = text_response(StatusCode::BAD_REQUEST, "400 Bad Request\n".to_owned());
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text_response(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A header name as most clients write it (`user-agent` → `User-Agent`): hyper keeps
/// names in lowercase only.
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case("user-agent"), "User-Agent");
        assert_eq!(title_case("host"), "Host");
        assert_eq!(title_case("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(title_case("a--b"), "A--B");
    }
}
