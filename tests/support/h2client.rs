//! A minimal HTTP/2 client (the `h2` crate) over any connected stream: cleartext TCP with
//! prior knowledge, or TLS after ALPN chose `h2`.

use tokio::io::{AsyncRead, AsyncWrite};

/// An HTTP/2 answer.
#[derive(Debug)]
pub struct H2Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    /// The body's bytes as they came.
    pub raw: Vec<u8>,
}

impl H2Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET uri` (absolute: `http://host/path`) as the only request of a fresh h2 connection.
pub async fn get<S>(io: S, uri: &str) -> Result<H2Resp, h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    send(io, http::Request::get(uri).body(()).unwrap()).await
}

/// `req` (without a body; its header fields sent each as written, so a name given twice is
/// two fields) as the only request of a fresh h2 connection.
pub async fn send<S>(io: S, req: http::Request<()>) -> Result<H2Resp, h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    send_body(io, req, None).await
}

/// [`send`], with `body` sent in one DATA frame after the headers when there is one.
pub async fn send_body<S>(
    io: S,
    req: http::Request<()>,
    body: Option<&'static [u8]>,
) -> Result<H2Resp, h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let (resp, mut stream) = client.send_request(req, body.is_none())?;
    if let Some(body) = body {
        stream.send_data(bytes::Bytes::from_static(body), true)?;
    }
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(H2Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&out).into_owned(),
        raw: out,
    })
}
