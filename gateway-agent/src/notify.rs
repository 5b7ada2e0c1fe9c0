//! systemd readiness (`Type=notify`): sends `READY=1` / `STOPPING=1` to `$NOTIFY_SOCKET`.
//! A no-op when not started by systemd.
//!
//! Public so the backend can use this copy too. A plain datagram to the socket named by the
//! variable (a path, or `@name` for the Linux abstract namespace); failures are logged, never
//! fatal: the service works the same without systemd.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is ready.
pub fn ready() {
    send("READY=1\n");
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, message) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Sends `message` as one datagram to the socket `path` names.
fn send_to(path: &OsStr, message: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket namespace (Linux).
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr).map(|_| ())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            Ok(())
        }
    } else {
        socket.send_to(message.as_bytes(), path).map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(send_to(dir.path().join("absent").as_os_str(), "X=1\n").is_err());
    }
}
