//! What the tests' stand-in API servers ([`crate::moto`], [`crate::azurite`]) share: waiting
//! until a started server listens, and one raw HTTP request for the setup calls the clients
//! under test do not make (creating a bucket or a container).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Waits (up to 60 s) until `child`, started from `bin`, accepts connections on
/// `host:port`; panics, naming `test`, if it exits first or takes longer.
pub fn wait_until_listening(child: &mut Child, host: IpAddr, port: u16, test: &str, bin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect((host, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{test}: {} exited at start: {status}", bin.display());
        }
        assert!(
            Instant::now() < deadline,
            "{test}: {} did not listen on {port} within 60 s",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `request` (a whole HTTP/1.1 request with `Connection: close`) to `host:port`; the
/// answer's status code, or 0 if it has none.
pub fn http_status(host: IpAddr, port: u16, request: &str) -> u16 {
    let mut conn = TcpStream::connect((host, port)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
