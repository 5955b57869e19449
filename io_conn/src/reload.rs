//! The control socket through which `io_conn --reload` asks the running io_conn to reload its
//! config and waits for the outcome (systemd 252 has no `Type=notify-reload`, and `kill -HUP`
//! returns before the reload is applied).
//!
//! The socket is `{runtime_dir}/{shared.name}.io_conn.ctl`, a Unix stream socket with mode 0600
//! in the 0700 runtime directory: only io_conn's user (under systemd: `shmsrv`, which is also who
//! runs `ExecReload=`) can connect. The protocol is one exchange: the client connects (that is
//! the request: reload the file io_conn was started with), io_conn reloads within the loop
//! iteration that accepts it, writes one reply and closes:
//!
//! ```text
//! OK generation 3: 2 changes applied: io_conn.max_connections io_conn.listener[127.0.0.1:7070]
//! OK generation 2: nothing changed
//! REFUSED shared.queue_size md.max_instances: need a restart; the old config is kept
//! INVALID /etc/shmsrv/shmsrv.toml:12: io_conn.idle_timeout: invalid duration "3 parsecs" (...)
//! ```
//!
//! Then more lines may follow with details (one per key). [`request_reload`] is the client;
//! the server side is in the loop (`server::reload`). SIGHUP runs the same reload without an
//! answer.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::Config;

/// Where the running io_conn of `cfg` listens for reload requests.
pub fn control_path(cfg: &Config) -> PathBuf {
    cfg.runtime_dir().join(format!("{}.io_conn.ctl", cfg.shared.name))
}

/// Asks the io_conn listening on `path` to reload and returns its answer (one or more lines),
/// waiting at most `timeout` for it.
pub fn request_reload(path: &Path, timeout: Duration) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "io_conn closed the control connection without an answer",
        ));
    }
    Ok(reply)
}

/// Whether an answer of [`request_reload`] means the reload was applied (or changed nothing).
pub fn reply_ok(reply: &str) -> bool {
    reply.starts_with("OK ")
}
