//! The differential conformance suite (issue 17): `testbed/conformance` runs
//! one table of client-visible cases against the real kube-apiserver
//! (testbed/cluster) and against `mcprom-sim`, and exits 0 only when every
//! case answers the same or its difference is listed with a reason. These
//! tests run it as CI does and check that it can fail. They need what
//! `testbed/cluster` needs (root, openssl, iproute2, the binaries of
//! `testbed/build`): a missing piece fails them with what to run.

mod common;

use std::process::{Command, Stdio};

use common::{MCPROM, sim_binary};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `testbed/conformance` with `args`; (exit code, stdout).
fn conformance(args: &[&str]) -> (i32, String) {
    let dir = tempfile::Builder::new()
        .prefix("mcprom-conformance-")
        .tempdir()
        .unwrap();
    let out = Command::new(format!("{REPO}/testbed/conformance"))
        .arg("--sim")
        .arg(sim_binary())
        .args(["--mcprom", MCPROM])
        .arg("--dir")
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {REPO}/testbed/conformance: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn the_simulator_answers_like_the_real_server_or_the_difference_is_listed() {
    let (code, out) = conformance(&[]);
    assert_eq!(
        code, 0,
        "testbed/conformance failed: a new difference between the real kube-apiserver and \
         mcprom-sim, or a listed one that went away (see the lines above; 2 means a world did \
         not start)"
    );
    let cases: Vec<&str> = out.lines().filter(|l| l.contains(" | real: ")).collect();
    assert!(
        cases.len() >= 90,
        "the table shrank to {} lines:\n{out}",
        cases.len()
    );
    for line in &cases {
        assert!(
            line.ends_with("| same") || line.contains("| accepted: "),
            "a case line that is neither same nor accepted: {line}"
        );
    }
    assert!(
        out.contains(&format!(
            "{n} cases, {n} same or accepted, 0 failing",
            n = cases.len() - 1
        )),
        "no clean summary line in:\n{out}"
    );
}

#[test]
fn a_new_difference_fails_the_suite() {
    // A simulator with a shorter minimum lifetime mints where the real
    // server says 422: the suite must catch it and exit 1.
    let (code, out) = conformance(&[
        "--only",
        "below the minimum (599 s)",
        "--sim-arg=--min-expiration=5m",
    ]);
    assert_eq!(
        code, 1,
        "the suite did not fail on a new difference:\n{out}"
    );
    assert!(
        out.contains("| DIFFERENT") && out.contains("new difference: status: real 422 / sim 201"),
        "the failure does not name the difference:\n{out}"
    );
}
