//! systemd readiness (`Type=notify`): sends `READY=1` / `STOPPING=1` to `$NOTIFY_SOCKET`.
//! A no-op when not started by systemd.

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
    let result = UnixDatagram::unbound().and_then(|socket| {
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
            socket.send_to(message.as_bytes(), &path).map(|_| ())
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
