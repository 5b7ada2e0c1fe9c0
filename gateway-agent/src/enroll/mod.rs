//! `gateway-agent enroll`: join the mesh with a one-time join token.
//!
//! The key pair is generated here and the private key never leaves the host: only a CSR goes
//! to `POST /api/v1/enroll` on the operator API (the front door). The answer is a certificate
//! signed by the mesh CA and the hub's pins. `https://` is verified against `--ca` (and
//! `--server-pin` when given); plain `http://` is accepted only for a loopback address.
//!
//! The URL is parsed by `http::Uri` and the request made by hyper's HTTP/1.1 client over the
//! (pinned) TLS stream: framing (Content-Length, chunked) is hyper's, not ours.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::http::Uri;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;

use self::exchange::post;

use crate::tls::{root_store, PinObserver, PinningVerifier};

mod exchange;

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

/// Where the operator API is, from `--api`.
#[derive(Debug)]
struct Target {
    tls: bool,
    /// Host as in the URL, without IPv6 brackets (for DNS, TLS names and IP checks).
    host: String,
    port: u16,
    /// `Host` header value: the host as written, with the port when it is not the default.
    authority: String,
    /// Path prefix without a trailing `/` (empty at the root).
    base_path: String,
}

fn parse_api(url: &str) -> Result<Target, EnrollError> {
    let scheme_error = || {
        EnrollError::Usage(format!(
            "--api must start with https:// (or http:// for loopback): {url}"
        ))
    };
    let uri = url
        .parse::<Uri>()
        .map_err(|e| match e.to_string().as_str() {
            m if m.contains("port") => EnrollError::Usage(format!("bad port in {url}")),
            _ if !url.contains("://") => scheme_error(),
            m => EnrollError::Usage(format!("--api {url}: {m}")),
        })?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(scheme_error()),
    };
    let written_host = uri.host().unwrap_or_default();
    let host = written_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(EnrollError::Usage(format!("no host in {url}")));
    }
    // `port_u16` is None both without a port and for one that is not a u16 (`:99999`): the
    // authority then holds more than the host.
    let authority = uri.authority().map_or("", |a| a.as_str());
    if authority.contains('@') {
        return Err(EnrollError::Usage(format!(
            "--api must not hold credentials (the join token is the credential): {url}"
        )));
    }
    let authority_len = authority.len();
    if uri.port_u16().is_none() && authority_len > written_host.len() {
        return Err(EnrollError::Usage(format!("bad port in {url}")));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(EnrollError::Usage(
            "plain http:// is only accepted for a loopback address; use the https:// front door"
                .into(),
        ));
    }
    let authority = match uri.port_u16() {
        Some(p) => format!("{written_host}:{p}"),
        None => written_host.to_owned(),
    };
    Ok(Target {
        tls,
        host,
        port,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
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
    let exchange = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        if !target.tls {
            return post(tcp, &target, &path, body).await.map_err(connect_err);
        }
        let config = tls_config(opts)?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|e| EnrollError::Usage(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        post(stream, &target, &path, body)
            .await
            .map_err(connect_err)
    };
    let (status, text) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| connect_err(format!("no answer within {} s", EXCHANGE_TIMEOUT.as_secs())))??;
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

/// The client TLS config for `--ca` (and `--server-pin`, when given).
fn tls_config(opts: &EnrollOptions) -> Result<rustls::ClientConfig, EnrollError> {
    let roots = root_store(&opts.ca).map_err(|e| EnrollError::Usage(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| EnrollError::Local(e.to_string()))?;
    Ok(match &opts.server_pin {
        Some(pin) => {
            let verifier =
                PinningVerifier::new(roots, vec![pin.clone()], provider, PinObserver::default())
                    .map_err(|e| EnrollError::Local(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        None => builder.with_root_certificates(roots).with_no_client_auth(),
    })
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

/// The whole exchange (TCP, TLS, request, answer) must finish within this; a stalled server
/// fails the command instead of hanging it.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn http_only_for_loopback() {
        assert!(parse_api("http://127.0.0.1:8080").is_ok());
        assert!(parse_api("http://localhost:8080/").is_ok());
        let t = parse_api("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("::1", "[::1]:8080")
        );
        assert!(parse_api("http://10.0.0.1:8080").is_err());
        assert!(parse_api("ftp://x").is_err());
        let t = parse_api("https://hub.example.com/prefix/").unwrap();
        assert_eq!(
            (t.port, t.base_path.as_str(), t.tls),
            (443, "/prefix", true)
        );
        assert_eq!(t.authority, "hub.example.com");
        let t = parse_api("https://hub.example.com:8443").unwrap();
        assert_eq!((t.port, t.base_path.as_str()), (8443, ""));
        for (bad, says) in [
            ("hub.example.com", "must start with https://"),
            ("https://hub.example.com:99999/", "bad port"),
            ("https:///x", "--api"),
        ] {
            let err = parse_api(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
