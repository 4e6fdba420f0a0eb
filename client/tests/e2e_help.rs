//! Every subcommand's `--help` ends with one example that works against
//! `scripts/cluster up`: this starts that cluster (on ports moved by an
//! offset, which the examples' default ports are moved by too), takes each
//! example from the help as printed, and runs it with the exports `up`
//! prints, from a folder where `.dsf/` is the cluster's, in an order where
//! each has what it needs (a job to watch, an account to message).

mod e2e;

use std::path::{Path, PathBuf};
use std::process::Command;

const OFFSET: u16 = 3000;

/// Ports the examples name, as `scripts/cluster up` uses them by default.
const DEFAULT_PORTS: [u16; 2] = [6300, 6200];

/// Subcommands in the order their examples run.
const ORDER: &[&[&str]] = &[
    &["status"],
    &["ping"],
    &["resolve"],
    &["call"],
    &["register"],
    &["login"],
    &["whoami"],
    &["user", "create"],
    &["set-role"],
    &["blacklist", "add"],
    &["blacklist", "get"],
    &["blacklist", "update"],
    &["blacklist", "list"],
    &["check"],
    &["history"],
    &["blacklist", "rm"],
    &["audit"],
    &["job", "submit"],
    &["worker"],
    &["job", "watch"],
    &["job", "status"],
    &["job", "results"],
    &["stream"],
    &["job", "cancel"],
    &["msg", "send"],
    &["msg", "listen"],
    &["msg", "history"],
    &["msg", "join"],
    &["msg", "leave"],
    &["pins", "list"],
    &["pins", "drop"],
    &["bench"],
    &["logout"],
];

/// Examples that run until stopped: started, waited on, then stopped.
const RUNS_ON: &[&str] = &["worker"];

struct Up {
    root: PathBuf,
    home: PathBuf,
    state: PathBuf,
    work: PathBuf,
    target: PathBuf,
    bin: PathBuf,
}

impl Up {
    fn cluster(&self, what: &str) -> Command {
        let mut cmd = Command::new(self.root.join("scripts/cluster"));
        clean_env(&mut cmd);
        cmd.arg(what)
            .env("HOME", &self.home)
            .env("DSF_CLUSTER_STATE", &self.state)
            .env("DSF_CLUSTER_PORT_OFFSET", OFFSET.to_string())
            .env("DSF_CLUSTER_PROFILE", "debug")
            .env("DSF_CLUSTER_BUILD", "0")
            .env("CARGO_TARGET_DIR", &self.target);
        cmd
    }

    /// A shell with what `scripts/cluster up` says to export.
    fn shell(&self, line: &str) -> Command {
        let mut cmd = Command::new("sh");
        clean_env(&mut cmd);
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        cmd.args(["-c", line])
            .current_dir(&self.work)
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("DSF_LB", format!("127.0.0.1:{}", 6300 + OFFSET))
            .env(
                "DSF_COLLECTOR",
                format!("127.0.0.1:{},127.0.0.1:{}", 6400 + OFFSET, 6401 + OFFSET),
            )
            .env("DSF_APP_SECRET_FILE", self.state.join("app.secret"));
        cmd
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.cluster("clean").output();
        let _ = std::fs::remove_dir_all(self.home.parent().unwrap());
    }
}

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("DSF_") || k == "XDG_CONFIG_HOME" {
            cmd.env_remove(k);
        }
    }
}

/// The example at the end of `client SUBCOMMAND --help`.
fn example(up: &Up, sub: &[&str]) -> String {
    let out = Command::new(up.bin.join("client"))
        .args(sub)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = help.lines().skip_while(|l| !l.starts_with("Example"));
    lines.next().unwrap_or_else(|| {
        panic!(
            "`client {} --help` ends with no example:\n{help}",
            sub.join(" ")
        )
    });
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("no example line:\n{help}"))
        .trim()
        .to_string();
    assert!(
        line.starts_with("client ") || line.contains("| client "),
        "{line}"
    );
    let mut line = line;
    for port in DEFAULT_PORTS {
        line = line.replace(&format!(":{port}"), &format!(":{}", port + OFFSET));
    }
    line
}

#[test]
fn every_subcommands_example_works_against_scripts_cluster_up() {
    let bin = e2e::binary("client").parent().unwrap().to_path_buf();
    let target = bin.parent().unwrap().to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let base = std::env::temp_dir().join(format!("dsf-help-{}", std::process::id()));
    let up = Up {
        root: root.to_path_buf(),
        home: base.join("home"),
        state: base.join("state"),
        work: base.join("work"),
        target,
        bin,
    };
    std::fs::create_dir_all(&up.work).unwrap();
    std::os::unix::fs::symlink(&up.state, up.work.join(".dsf")).unwrap();
    let out = up.cluster("up").output().unwrap();
    assert!(
        out.status.success(),
        "scripts/cluster up: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for sub in ORDER {
        let line = example(&up, sub);
        if RUNS_ON.contains(&sub[0]) {
            // The worker works job 1 (the submit's example) to its end.
            let mut child = up.shell(&format!("exec {line}")).spawn().unwrap();
            e2e::wait_for("the worker to finish job 1", e2e::WAIT, || {
                assert!(child.try_wait().unwrap().is_none(), "{line} ended early");
                let out = up.shell("client job status 1 --json").output().unwrap();
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                (v["state"] == "done").then_some(())
            });
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            e2e::wait_for(&format!("{line} to stop"), e2e::WAIT, || {
                child.try_wait().unwrap()
            });
            continue;
        }
        let out = up.shell(&line).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` (the example of client {}) exited {:?}:\n{}\n{}",
            sub.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
