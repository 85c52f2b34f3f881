//! The command line's client of the admin listener (`tollgate reload`, `tollgate cache
//! purge`): one request on a fresh connection, its status line and JSON answer.

use std::io::{Read, Write};
use std::time::Duration;

/// An answer: the status line and the body read as JSON (`Null` when it is not).
pub struct Answer {
    pub status_line: String,
    pub json: serde_json::Value,
    /// The body as sent, for a message when it is not the JSON expected.
    pub body: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status_line.starts_with("HTTP/1.1 200")
    }
}

/// `method path` to the admin listener at `address`, with the bearer `token` and a JSON
/// `body` when given.
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&[u8]>,
    body: Option<&str>,
) -> Result<Answer, String> {
    let mut s = std::net::TcpStream::connect(address)
        .map_err(|e| format!("cannot reach the admin listener {address}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let auth = token.map_or(String::new(), |t| {
        format!("Authorization: Bearer {}\r\n", String::from_utf8_lossy(t))
    });
    let content = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}{content}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok(Answer {
        status_line: head.lines().next().unwrap_or("no answer").to_owned(),
        json: serde_json::from_str(body.trim()).unwrap_or_default(),
        body: body.trim().to_owned(),
    })
}
