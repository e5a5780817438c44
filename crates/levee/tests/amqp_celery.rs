//! Seed scenario 13 for real, with Celery and kombu on Levee's AMQP front end: a web handler
//! stores an upload and enqueues an encoding job; encoders are Celery workers with
//! `acks_late=True` and prefetch 1. An encoder SIGKILLed mid-job has its job redelivered to
//! another; a broker `kill -9` and restart loses no enqueued job; remote control (`celery
//! inspect ping`, through the pidbox fanout exchange, queues named `…@host.celery.pidbox` with
//! `x-expires`, and a reply queue) answers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use common::amqp::{python, root};

struct Scenario {
    dir: tempfile::TempDir,
}

/// A worker process, killed when dropped.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Scenario {
    fn new() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        for d in ["uploads", "started", "done"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Scenario { dir }
    }

    fn path(&self, sub: &str, job: &str) -> PathBuf {
        self.dir.path().join(sub).join(job)
    }

    fn command(&self, server: &Server, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(root().join("crates/levee/tests/amqp/celery"))
            .env("LEVEE_AMQP_PORT", server.amqp.port().to_string())
            .env("SCENARIO_DIR", self.dir.path());
        c
    }

    /// The web handler, for each job: store the upload, enqueue (confirmed), answer 202.
    fn upload(&self, server: &Server, jobs: &[&str]) {
        let out = self
            .command(server, python())
            .arg("encoder.py")
            .args(jobs)
            .output()
            .unwrap();
        common::amqp::assert_ok("enqueueing", &out);
    }

    fn worker(&self, server: &Server, name: &str) -> Worker {
        let celery = python().with_file_name("celery");
        let child = self
            .command(server, &celery)
            .args(["-A", "encoder", "worker", "-n", &format!("{name}@%h")])
            .args(["--pool", "solo", "--concurrency", "1"])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["-l", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn wait_for(&self, sub: &str, jobs: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !jobs.iter().all(|j| self.path(sub, j).exists()) {
            assert!(
                Instant::now() < deadline,
                "jobs {jobs:?} not all in {sub}/ after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of the encoders that started `job`, in order.
    fn started_by(&self, job: &str) -> Vec<u32> {
        std::fs::read_to_string(self.path("started", job))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

#[test]
fn celery_encoders_survive_a_killed_worker_and_a_broker_restart() {
    let mut server = Server::start();
    let s = Scenario::new();
    let mut workers = vec![s.worker(&server, "enc1"), s.worker(&server, "enc2")];

    // An encoder killed mid-job: its job goes to the other encoder.
    s.upload(&server, &["slow-1"]);
    s.wait_for("started", &["slow-1"]);
    let victim = s.started_by("slow-1")[0];
    let i = workers
        .iter()
        .position(|w| w.0.id() == victim)
        .expect("the job runs in one of our workers");
    let killed = workers.remove(i);
    drop(killed); // SIGKILL
    s.wait_for("done", &["slow-1"]);
    let by = s.started_by("slow-1");
    assert_eq!(by.len(), 2, "started once, redelivered once: {by:?}");
    assert_ne!(by[1], victim, "redelivered to another encoder");

    // More uploads are all encoded by the surviving encoder.
    let jobs = ["a1", "a2", "a3", "a4", "a5"];
    s.upload(&server, &jobs);
    s.wait_for("done", &jobs);

    // Jobs enqueued (confirmed) while no encoder runs survive a broker kill -9 and restart.
    workers.clear();
    let jobs = ["b1", "b2", "b3", "b4", "b5"];
    s.upload(&server, &jobs);
    server.restart_after_kill9();
    let _worker = s.worker(&server, "enc3");
    s.wait_for("done", &jobs);
    for j in jobs {
        assert_eq!(s.started_by(j).len(), 1, "{j} encoded once");
    }

    // Remote control works as on RabbitMQ: the running encoder answers a ping.
    let celery = python().with_file_name("celery");
    let out = s
        .command(&server, &celery)
        .args(["-A", "encoder", "inspect", "ping", "-t", "5"])
        .output()
        .unwrap();
    common::amqp::assert_ok("celery inspect ping", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pong"), "{text}");
}
