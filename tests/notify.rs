//! sd_notify: the real binary with NOTIFY_SOCKET pointing at a datagram
//! socket this test reads.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Notifications {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(dir: &std::path::Path) -> (Notifications, std::path::PathBuf) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        (
            Notifications {
                socket,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Read until a message satisfies `pred`; returns it.
    fn until(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if pred(&msg) {
                    return msg;
                }
            }
        }
        panic!("no {what} within {timeout:?}; seen: {:?}", self.seen);
    }
}

#[test]
fn ready_status_watchdog_reloading_and_stopping_are_sent() {
    let sim = Sim::start(&["--clusters", "2"]);
    let work = tempfile::tempdir().unwrap();
    // c2 is down from the start: READY must still come, after its first error.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(sim.control(reqwest::Method::POST, "/clusters/c2/down", None));
    let config = write_config(&sim, work.path(), &Conf::default(), None);
    let (mut notes, socket) = Notifications::bind(work.path());
    let mut child = Command::new(MCPROM)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "1000000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = notes.until("READY=1", Duration::from_secs(30), |m| {
        m.contains("READY=1")
    });
    assert!(ready.contains("STATUS=1/2 clusters fresh"), "{ready}");
    assert!(ready.contains("1 failing"), "{ready}");
    assert!(
        work.path().join("tokens/c1.token").exists(),
        "READY after c1's token"
    );
    notes.until("WATCHDOG=1", Duration::from_secs(5), |m| {
        m.contains("WATCHDOG=1")
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    notes.until("RELOADING=1", Duration::from_secs(10), |m| {
        m.contains("RELOADING=1")
    });
    let again = notes.until("READY=1 after the reload", Duration::from_secs(10), |m| {
        m.contains("READY=1")
    });
    assert!(again.contains("STATUS="), "{again}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    notes.until("STOPPING=1", Duration::from_secs(10), |m| {
        m.contains("STOPPING=1")
    });
    assert!(child.wait().unwrap().success());
}
