//! Test helpers (feature `test-util`): a real `redis-server` on a free port.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let redis = nexus_middleware::test_util::RedisServer::start().await;
//! println!("{}", redis.url());
//! # }
//! ```

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// A `redis-server` child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Start one on a free port of 127.0.0.1 and wait until it accepts connections.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start within 10 s.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        Self::start_on(port).await
    }

    /// Start one on this port (e.g. to bring a stopped server back).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
