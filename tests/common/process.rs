//! Background `drain` processes: started with their output streamed or sent to files, waited
//! for with a time limit, and readiness read from their output (never a fixed sleep).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

/// Starts `drain --data-dir DIR ARGS...` with its standard error streamed, line by line, to
/// the returned channel (stdout piped, for `wait_with_output`).
pub fn spawn_watched(dir: &Path, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drain");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Readiness by output: waits for a line containing `needle`; returns the lines seen.
pub fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line containing {needle:?} in {seen:#?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

/// Starts `drain --data-dir DIR ARGS...` in the background, standard output and error to the
/// files `out` and `err`.
pub fn spawn_logged(dir: &Path, args: &[&str], out: &Path, err: &Path) -> Child {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).expect("stdout file"))
        .stderr(std::fs::File::create(err).expect("stderr file"))
        .spawn()
        .expect("spawn drain")
}

/// Waits up to `d` for the child; its exit code (-1 for a signal) if it exited.
pub fn wait_up_to(child: &mut Child, d: Duration) -> Option<i32> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(st.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits for `child` to exit; after `limit` kills it and panics with its standard error (the
/// file `err`).
pub fn wait_exit(child: &mut Child, limit: Duration, err: &Path) -> i32 {
    wait_up_to(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "drain did not exit within {limit:?}\nstderr:\n{}",
            std::fs::read_to_string(err).unwrap_or_default()
        )
    })
}

/// What a finished `drain` run printed.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `drain --data-dir DIR ARGS...` within `limit`; its output goes to `<logs>.out` and
/// `<logs>.err` (kept for a failure's post-mortem) and is returned.
pub fn run_logged(dir: &Path, args: &[&str], logs: &Path, limit: Duration) -> Ran {
    let (out, err) = (logs.with_extension("out"), logs.with_extension("err"));
    let mut child = spawn_logged(dir, args, &out, &err);
    let code = wait_exit(&mut child, limit, &err);
    Ran {
        code,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}
