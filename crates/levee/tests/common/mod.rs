//! Test harness: starts the real `levee` binary on ephemeral ports with its own data directory,
//! and speaks the wire protocol over a plain blocking TCP socket where a test needs raw frames.
#![allow(dead_code)]

pub(crate) mod amqp;
pub(crate) mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use levee_proto::{ClientFrame, DEFAULT_MAX_FRAME, Hello, ServerFrame};

/// A running `levee serve` child process.
pub(crate) struct Server {
    child: Option<Child>,
    pub wire: SocketAddr,
    pub http: SocketAddr,
    /// The AMQP 0-9-1 listener (always on an ephemeral port in tests).
    pub amqp: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh temporary data directory.
    pub(crate) fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags.
    pub(crate) fn start_with(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::spawn(&dir, None, None, extra);
        s._tmp = Some(tmp);
        s
    }

    fn spawn(
        data_dir: &Path,
        wire: Option<SocketAddr>,
        amqp: Option<SocketAddr>,
        extra: &[&str],
    ) -> Server {
        let listen = wire.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let amqp = amqp.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = serve_command(data_dir, &listen, &amqp, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning levee");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut wire_addr = None;
        let mut http_addr = None;
        let mut amqp_addr = None;
        while wire_addr.is_none() || http_addr.is_none() || amqp_addr.is_none() {
            let line = lines
                .next()
                .expect("levee exited before listening")
                .expect("reading levee's stdout");
            if let Some(a) = line.strip_prefix("levee: wire listening on ") {
                wire_addr = Some(a.parse().expect("wire address"));
            } else if let Some(a) = line.strip_prefix("levee: http listening on ") {
                http_addr = Some(a.parse().expect("http address"));
            } else if let Some(a) = line.strip_prefix("levee: amqp listening on ") {
                amqp_addr = Some(a.parse().expect("amqp address"));
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            wire: wire_addr.unwrap(),
            http: http_addr.unwrap(),
            amqp: amqp_addr.unwrap(),
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// `kill -9`: the process gets no chance to flush or sync anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaping");
        }
    }

    /// SIGKILLs the server and starts a new one on the same data directory and wire port.
    pub(crate) fn restart_after_kill9(&mut self) {
        self.restart_after_kill9_with(&[]);
    }

    /// [`Server::restart_after_kill9`], the new one started with `extra` flags.
    pub(crate) fn restart_after_kill9_with(&mut self, extra: &[&str]) {
        self.kill9();
        let tmp = self._tmp.take();
        let mut s = Self::spawn(&self.data_dir, Some(self.wire), Some(self.amqp), extra);
        s._tmp = tmp;
        std::mem::swap(self, &mut s);
    }

    /// The server process's PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `levee serve` on `data_dir`, the wire port on `listen`, AMQP on `amqp`, HTTP on an ephemeral
/// port (so a RabbitMQ or another broker on the machine never collides), logging warnings, with
/// `extra` flags.
pub(crate) fn serve_command(data_dir: &Path, listen: &str, amqp: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_levee"));
    cmd.args([
        "serve",
        "--listen",
        listen,
        "--http",
        "127.0.0.1:0",
        "--amqp",
        amqp,
        "--data-dir",
    ])
    .arg(data_dir)
    .args(extra)
    .env("LEVEE_LOG", "warn");
    cmd
}

/// Runs `levee serve` on `data_dir` with `extra` flags, expecting it to exit on its own (at most
/// 10 s, else it is killed and the test fails): returns whether it succeeded and its stderr.
pub(crate) fn serve_expecting_exit(data_dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut child = serve_command(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning levee");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("levee serve {extra:?} kept running instead of exiting");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    (status.success(), stderr)
}

/// A raw protocol connection over a blocking socket.
pub(crate) struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects without a handshake.
    pub(crate) fn connect(addr: SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes the handshake.
    pub(crate) fn handshake(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&ClientFrame::Hello(Hello::new("raw-test")));
        match raw.recv() {
            Some(ServerFrame::Welcome(_)) => raw,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub(crate) fn send(&mut self, f: &ClientFrame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).expect("encode");
        self.sock.write_all(&b).expect("write");
    }

    pub(crate) fn send_bytes(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    /// The next frame other than a heartbeat, or `None` when the server closed the socket.
    pub(crate) fn recv(&mut self) -> Option<ServerFrame> {
        loop {
            match ServerFrame::decode(&mut self.buf, DEFAULT_MAX_FRAME).expect("server frame") {
                Some(ServerFrame::Heartbeat) => continue,
                Some(f) => return Some(f),
                None => {}
            }
            let mut chunk = [0u8; 65536];
            let n = match self.sock.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read: {e}"),
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame other than a heartbeat within `wait`: [`Recv::Silent`] if none came.
    pub(crate) fn recv_within(&mut self, wait: Duration) -> Recv {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let got = loop {
            match ServerFrame::decode(&mut self.buf, DEFAULT_MAX_FRAME).expect("server frame") {
                Some(ServerFrame::Heartbeat) => continue,
                Some(f) => break Recv::Frame(f),
                None => {}
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => break Recv::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Recv::Closed,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Recv::Silent;
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        self.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        got
    }

    /// Whether the server closed the connection (reads until EOF, skipping frames).
    pub(crate) fn closed_by_server(&mut self) -> bool {
        loop {
            match self.recv() {
                None => return true,
                Some(ServerFrame::Close { .. }) => {}
                Some(_) => {}
            }
        }
    }
}

/// What [`Raw::recv_within`] saw.
#[derive(Debug)]
pub(crate) enum Recv {
    Frame(ServerFrame),
    Closed,
    Silent,
}

/// A client connected to `server` (no reconnection: a lost connection is a test failure).
pub(crate) async fn client(server: &Server) -> levee_client::Client {
    let opts = levee_client::ClientOptions {
        reconnect: None,
        ..levee_client::ClientOptions::default()
    };
    levee_client::Client::connect(server.wire, opts)
        .await
        .expect("connecting to levee")
}

/// A memory queue config with this policy and limits (other fields default).
pub(crate) fn memory_queue(
    overflow: levee_proto::Overflow,
    max_messages: u64,
    max_bytes: u64,
) -> levee_proto::QueueConfig {
    levee_proto::QueueConfig {
        overflow,
        max_messages,
        max_bytes,
        durability: levee_proto::Durability::Memory,
        ..levee_proto::QueueConfig::default()
    }
}

/// The message's id: its first 4 payload bytes, little-endian.
pub(crate) fn id_of(payload: &[u8]) -> u32 {
    u32::from_le_bytes(payload[..4].try_into().expect("4-byte id"))
}

/// A message whose payload starts with `id` and is `size` bytes long (at least 4).
pub(crate) fn numbered(id: u32, size: usize) -> levee_proto::Message {
    let mut p = vec![0u8; size.max(4)];
    p[..4].copy_from_slice(&id.to_le_bytes());
    levee_proto::Message::new(p)
}

/// One HTTP/1.1 request (`extra_headers`: whole `Name: value\r\n` lines) against the broker's
/// HTTP port: (status, the whole response, head and body).
pub(crate) fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{extra_headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read http response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, resp)
}

/// The body of a response from [`http_request`].
pub(crate) fn http_body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A JSON request (`body`, if any) with a JSON answer: (status, the parsed body).
pub(crate) fn http_json(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, resp) = http_request(server.http, method, path, "", &body);
    let text = http_body(&resp).trim();
    let json = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    (status, json)
}

/// A plain HTTP/1.1 GET against the broker's HTTP port: (status, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, resp) = http_request(addr, "GET", path, "", "");
    (status, http_body(&resp).to_string())
}

/// Runs `levee ARGS` against `server` (through `LEVEE_ADDR`): its output, whatever the exit.
pub(crate) fn levee(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .env("LEVEE_ADDR", server.wire.to_string())
        .output()
        .expect("running levee")
}

/// The standard output of a `levee` run that must have succeeded.
pub(crate) fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "levee failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `levee ARGS` against `server`, which must succeed: its standard output.
pub(crate) fn levee_ok(server: &Server, args: &[&str]) -> String {
    ok(levee(server, args))
}

/// The value of an unlabelled gauge or counter in `/metrics`.
pub(crate) fn metric(http: SocketAddr, name: &str) -> u64 {
    let (status, body) = http_get(http, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in /metrics"))
}

/// Polls `cond` every 10 ms until it holds (at most 10 s, then panics saying `what`).
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `levee consume` process that takes one message of `queue` and "works" on it for a minute,
/// never acking: kill it to simulate a consumer crashing mid-message.
pub(crate) fn stuck_worker(server: &Server, queue: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args([
            "consume",
            queue,
            "--credit",
            "1",
            "--work-ms",
            "60000",
            "--quiet",
            "--addr",
        ])
        .arg(server.wire.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning levee consume")
}

/// Polls `queue`'s stats until `cond` holds (at most 10 s, then panics with the last stats):
/// for states reached by background work, without guessing how long it takes.
pub(crate) async fn wait_for_stats(
    c: &levee_client::Client,
    queue: &str,
    cond: impl Fn(&levee_proto::QueueStats) -> bool,
) -> levee_proto::QueueStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.inspect(queue).await.expect("inspect").stats;
        if cond(&s) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition never held: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `cond` every 20 ms until it holds (at most 20 s, then panics).
pub(crate) async fn wait_until_async_ok<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Installs a tool through the project's script (`scripts/ops-tools.sh`: promtool, chromium,
/// playwright-core): its path.
pub(crate) fn ops_tool(tool: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ops-tools.sh");
    let out = Command::new("sh")
        .arg(script)
        .arg(tool)
        .output()
        .expect("running scripts/ops-tools.sh");
    assert!(
        out.status.success(),
        "scripts/ops-tools.sh {tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Publishes one message over HTTP (`POST /api/queues/{queue}/messages` with `body`), expecting
/// 200.
pub(crate) fn http_publish(server: &Server, queue: &str, body: serde_json::Value) {
    let (st, v) = http_json(
        server,
        "POST",
        &format!("/api/queues/{queue}/messages"),
        Some(&body),
    );
    assert_eq!(st, 200, "{v}");
}
