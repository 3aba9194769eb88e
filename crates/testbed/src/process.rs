//! Child processes of a testbed, owned by one dedicated thread.
//!
//! Lifetime rule: every component is started with `PR_SET_PDEATHSIG = SIGKILL`. Linux
//! sends that signal when the *thread* that forked the child ends, so all components are
//! forked from one long-lived "owner" thread that only ends at [`Components::shutdown`] or
//! when the whole process dies. Hence a component never outlives the process that
//! started it: neither the `testbed supervise` process nor a test binary that started a
//! cluster through the test-support API, however that process ends (panic, SIGKILL, ...).
//! On an orderly exit an `atexit` hook also kills the components and removes a temporary
//! state folder.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// Pids of all live components of this process, for the `atexit` hook.
static LIVE_PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Folders to remove at exit (temporary state folders of the test-support API).
static REMOVE_AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static ATEXIT: std::sync::Once = std::sync::Once::new();

extern "C" fn at_exit() {
    if let Ok(pids) = LIVE_PIDS.try_lock() {
        for pid in pids.iter() {
            // SAFETY: kill(2) with a pid we started; failure (already gone) is harmless.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for pid in pids.iter() {
            let mut status = 0;
            // SAFETY: reaping our own child; WNOHANG is not used so this waits for it.
            unsafe { libc::waitpid(*pid, &mut status, 0) };
        }
    }
    if let Ok(dirs) = REMOVE_AT_EXIT.try_lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn install_atexit() {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function without captured state.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Removes `dir` when this process exits normally.
pub fn remove_at_exit(dir: &Path) {
    install_atexit();
    REMOVE_AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

/// What ended a component unexpectedly.
#[derive(Clone, Debug)]
pub struct Exit {
    pub name: String,
    pub status: String,
    pub log: PathBuf,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "component {} exited ({}); last lines of {}:\n{}",
            self.name,
            self.status,
            self.log.display(),
            tail(&self.log, 25)
        )
    }
}

enum Request {
    Spawn {
        name: String,
        command: Box<Command>,
        log: PathBuf,
        reply: mpsc::Sender<Result<u32>>,
    },
    Pid {
        name: String,
        reply: mpsc::Sender<Option<u32>>,
    },
    Restart {
        name: String,
        reply: mpsc::Sender<Result<u32>>,
    },
    Shutdown {
        reply: mpsc::Sender<()>,
    },
}

struct Running {
    name: String,
    child: Child,
    log: PathBuf,
    recipe: Recipe,
}

/// What a component was started with, to start it again the same way.
struct Recipe {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)>,
    dir: Option<PathBuf>,
}

impl Recipe {
    fn of(command: &Command) -> Recipe {
        Recipe {
            program: command.get_program().to_os_string(),
            args: command.get_args().map(|a| a.to_os_string()).collect(),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_os_string(), v.map(|v| v.to_os_string())))
                .collect(),
            dir: command.get_current_dir().map(Path::to_path_buf),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }
}

/// Handle to the owner thread of a testbed's processes.
#[derive(Clone)]
pub struct Components {
    tx: mpsc::Sender<Request>,
    exits: tokio::sync::watch::Receiver<Option<Exit>>,
    shut_down: Arc<Mutex<bool>>,
}

impl Components {
    /// Starts the owner thread.
    pub fn new() -> Result<Components> {
        install_atexit();
        let (tx, rx) = mpsc::channel::<Request>();
        let (exit_tx, exits) = tokio::sync::watch::channel(None);
        std::thread::Builder::new()
            .name("testbed-components".into())
            .spawn(move || owner_loop(rx, exit_tx))
            .context("starting the testbed process owner thread")?;
        Ok(Components {
            tx,
            exits,
            shut_down: Arc::new(Mutex::new(false)),
        })
    }

    /// Starts `command` as component `name`, its stdout and stderr appended to `log`.
    pub fn spawn(&self, name: &str, command: Command, log: &Path) -> Result<u32> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Request::Spawn {
                name: name.to_string(),
                command: Box::new(command),
                log: log.to_path_buf(),
                reply,
            })
            .map_err(|_| anyhow!("the testbed process owner thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("the testbed process owner thread is gone"))?
    }

    /// The pid of the running component `name`, if there is one.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Request::Pid {
                name: name.to_string(),
                reply,
            })
            .ok()?;
        rx.recv().ok().flatten()
    }

    /// Sends `signal` to component `name` (SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let pid = self
            .pid(name)
            .ok_or_else(|| anyhow!("no component {name} is running"))?;
        // SAFETY: signalling a child this process started and has not reaped.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending signal {signal} to {name} (pid {pid})"));
        }
        Ok(())
    }

    /// Kills component `name` with SIGKILL (as in a crash) and starts it again with the same
    /// command, log and arguments; returns the new pid. Its exit is not reported as
    /// unexpected.
    pub fn restart(&self, name: &str) -> Result<u32> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Request::Restart {
                name: name.to_string(),
                reply,
            })
            .map_err(|_| anyhow!("the testbed process owner thread is gone"))?;
        rx.recv()
            .map_err(|_| anyhow!("the testbed process owner thread is gone"))?
    }

    /// A receiver that turns `Some` when a component exits unexpectedly.
    pub fn exits(&self) -> tokio::sync::watch::Receiver<Option<Exit>> {
        self.exits.clone()
    }

    /// The first unexpected exit, if any.
    pub fn failed(&self) -> Option<Exit> {
        self.exits.borrow().clone()
    }

    /// Stops all components (SIGTERM, then SIGKILL after a grace period), newest first.
    pub fn shutdown(&self) {
        let mut done = self.shut_down.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return;
        }
        *done = true;
        let (reply, rx) = mpsc::channel();
        if self.tx.send(Request::Shutdown { reply }).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn owner_loop(rx: mpsc::Receiver<Request>, exit_tx: tokio::sync::watch::Sender<Option<Exit>>) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Request::Spawn {
                name,
                mut command,
                log,
                reply,
            }) => {
                let recipe = Recipe::of(&command);
                let result = start(&name, &mut command, &log).map(|child| {
                    let pid = child.id();
                    remember_pid(pid);
                    running.push(Running {
                        name,
                        child,
                        log,
                        recipe,
                    });
                    pid
                });
                let _ = reply.send(result);
            }
            Ok(Request::Pid { name, reply }) => {
                let pid = running
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| r.child.id());
                let _ = reply.send(pid);
            }
            Ok(Request::Restart { name, reply }) => {
                let result = match running.iter_mut().find(|r| r.name == name) {
                    None => Err(anyhow!("no component {name} is running")),
                    Some(r) => {
                        let old = r.child.id();
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        forget_pid(old);
                        let mut command = r.recipe.command();
                        start(&r.name, &mut command, &r.log).map(|child| {
                            let pid = child.id();
                            remember_pid(pid);
                            r.child = child;
                            pid
                        })
                    }
                };
                // A component that did not start again is reported below as exited.
                let _ = reply.send(result);
            }
            Ok(Request::Shutdown { reply }) => {
                stop_all(&mut running);
                let _ = reply.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every handle is gone: nobody can use the cluster any more.
                stop_all(&mut running);
                return;
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].child.try_wait() {
                Ok(Some(status)) => {
                    let r = running.remove(i);
                    forget_pid(r.child.id());
                    let exit = Exit {
                        name: r.name,
                        status: status.to_string(),
                        log: r.log,
                    };
                    tracing::error!("{exit}");
                    exit_tx.send_if_modified(|slot| {
                        if slot.is_none() {
                            *slot = Some(exit);
                            true
                        } else {
                            false
                        }
                    });
                }
                _ => i += 1,
            }
        }
    }
}

fn start(name: &str, command: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the log {} of {name}", log.display()))?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        let parent = libc::getpid();
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn().with_context(|| {
        format!(
            "starting {name} ({})",
            command.get_program().to_string_lossy()
        )
    })
}

fn remember_pid(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid as i32);
}

fn forget_pid(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid as i32);
}

fn stop_all(running: &mut Vec<Running>) {
    // Newest first: the simulator and kwok before the API server, etcd last.
    for r in running.iter().rev() {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
        // A component frozen with SIGSTOP gets the SIGTERM only once it runs again.
        // SAFETY: as above.
        unsafe { libc::kill(r.child.id() as i32, libc::SIGCONT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = r.child.id() as i32;
        loop {
            let mut status = 0;
            // SAFETY: non-blocking reap of our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if rc != 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for r in running.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
        forget_pid(r.child.id());
    }
    running.clear();
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = std::fs::File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let mut lines = VecDeque::with_capacity(n);
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}
