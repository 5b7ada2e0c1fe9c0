//! `gateway-agent enroll`: join the mesh with a one-time join token.
//!
//! The key pair is generated here and the private key never leaves the host: only a CSR goes
//! to `POST /api/v1/enroll` on the operator API (the front door). The answer is a certificate
//! signed by the mesh CA and the hub's pins. `https://` is verified against `--ca` (and
//! `--server-pin` when given); plain `http://` is accepted only for a loopback address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::{root_store, PinObserver, PinningVerifier};

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Base URL of the operator API (`https://front-door` or `http://127.0.0.1:8080`).
    pub api: String,
    /// The one-time join token.
    pub token: String,
    /// The agent id the token was issued for.
    pub id: String,
    /// The mesh CA certificate (PEM) to verify the API against.
    pub ca: PathBuf,
    /// Optional pin the API's certificate must have.
    pub server_pin: Option<String>,
    /// Where to write `key.pem`, `cert.pem` and `ca.pem`.
    pub out: PathBuf,
}

/// What enrolment produced.
#[derive(Debug, Clone, Deserialize)]
pub struct Enrolled {
    /// The agent id.
    pub agent_id: String,
    /// Pin of the new certificate.
    pub pin: String,
    /// The hub's pins, for `outbound.server_pins`.
    pub hub_pins: Vec<String>,
    /// PEM certificate.
    pub certificate: String,
    /// PEM CA.
    pub ca: String,
}

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Network or TLS failure.
    #[error("cannot reach {url}: {detail}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The backend refused.
    #[error("the backend refused the enrolment ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's error message.
        message: String,
    },
    /// Key, CSR or file handling failed.
    #[error("{0}")]
    Local(String),
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    base_path: String,
}

fn parse_api(url: &str) -> Result<Target, EnrollError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(EnrollError::Usage(format!(
            "--api must start with https:// (or http:// for loopback): {url}"
        )));
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse()
                .map_err(|_| EnrollError::Usage(format!("bad port in {url}")))?,
        ),
        _ => (
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            if tls { 443 } else { 80 },
        ),
    };
    if host.is_empty() {
        return Err(EnrollError::Usage(format!("no host in {url}")));
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(EnrollError::Usage(
            "plain http:// is only accepted for a loopback address; use the https:// front door"
                .into(),
        ));
    }
    let base_path = format!("/{}", path.trim_end_matches('/'));
    Ok(Target {
        tls,
        host,
        port,
        base_path: base_path.trim_end_matches('/').to_owned(),
    })
}

/// Enrols this host: generates a key, sends the CSR, writes key/cert/CA (0600).
pub async fn enroll(opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    mesh_certs::validate_agent_id(&opts.id).map_err(|e| EnrollError::Usage(e.to_string()))?;
    let target = parse_api(&opts.api)?;
    let (csr, key_pem) =
        mesh_certs::generate_csr(&opts.id).map_err(|e| EnrollError::Local(e.to_string()))?;
    let body =
        serde_json::json!({"token": opts.token, "agent_id": opts.id, "csr": csr}).to_string();
    let path = format!("{}/api/v1/enroll", target.base_path);
    let connect_err = |detail: String| EnrollError::Connect {
        url: opts.api.clone(),
        detail,
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let (status, text) = if target.tls {
        let roots = root_store(&opts.ca).map_err(|e| EnrollError::Usage(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EnrollError::Local(e.to_string()))?;
        let config = match &opts.server_pin {
            Some(pin) => {
                let verifier = PinningVerifier::new(
                    roots,
                    vec![pin.clone()],
                    provider,
                    PinObserver::default(),
                )
                .map_err(|e| EnrollError::Local(e.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            None => builder.with_root_certificates(roots).with_no_client_auth(),
        };
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| EnrollError::Usage(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        post(stream, &target.host, &path, &body)
            .await
            .map_err(connect_err)?
    } else {
        post(tcp, &target.host, &path, &body)
            .await
            .map_err(connect_err)?
    };
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(EnrollError::Refused { status, message });
    }
    let enrolled: Enrolled = serde_json::from_str(&text)
        .map_err(|e| EnrollError::Local(format!("unexpected answer from the backend: {e}")))?;
    write_identity(&opts.out, &key_pem, &enrolled)?;
    Ok(enrolled)
}

fn write_identity(out: &Path, key_pem: &str, e: &Enrolled) -> Result<(), EnrollError> {
    std::fs::create_dir_all(out)
        .map_err(|err| EnrollError::Local(format!("{}: {err}", out.display())))?;
    for (name, contents) in [
        ("key.pem", key_pem),
        ("cert.pem", e.certificate.as_str()),
        ("ca.pem", e.ca.as_str()),
    ] {
        mesh_certs::write_private(&out.join(name), contents)
            .map_err(|err| EnrollError::Local(format!("{err:#}")))?;
    }
    Ok(())
}

async fn post<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // Bounded: an enrolment answer is a few KiB.
    let mut limited = (&mut stream).take(1024 * 1024);
    let _ = limited.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `[outbound]` lines for a freshly enrolled agent.
pub fn config_snippet(e: &Enrolled, out: &Path, hub_url: &str) -> String {
    let pins = e
        .hub_pins
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[agent]\nid = \"{id}\"\n\n[outbound]\nbackend_url = \"{hub_url}\"\nca = \"{o}/ca.pem\"\ncert = \"{o}/cert.pem\"\nkey = \"{o}/key.pem\"\nserver_pins = [{pins}]\n",
        id = e.agent_id,
        o = out.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_for_loopback() {
        assert!(parse_api("http://127.0.0.1:8080").is_ok());
        assert!(parse_api("http://localhost:8080/").is_ok());
        assert!(parse_api("http://[::1]:8080").is_ok());
        assert!(parse_api("http://10.0.0.1:8080").is_err());
        assert!(parse_api("ftp://x").is_err());
        let t = parse_api("https://hub.example.com/prefix/").unwrap();
        assert_eq!(
            (t.port, t.base_path.as_str(), t.tls),
            (443, "/prefix", true)
        );
    }
}
