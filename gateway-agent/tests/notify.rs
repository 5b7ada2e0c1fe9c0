//! `notify`: datagrams reach the socket `$NOTIFY_SOCKET` names. Its own test binary, because
//! it sets an environment variable (no other test thread reads the environment meanwhile).
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;

#[test]
fn ready_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&path).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);
    gateway_agent::notify::ready();
    gateway_agent::notify::stopping();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\n");
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    // A socket that is gone is logged, not fatal.
    std::env::set_var("NOTIFY_SOCKET", dir.path().join("absent"));
    gateway_agent::notify::ready();
    std::env::remove_var("NOTIFY_SOCKET");
    gateway_agent::notify::ready();
}
