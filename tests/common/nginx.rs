//! A real nginx on an ephemeral 127.0.0.1 port, serving one folder, for the HTTP origin tests:
//! the config and its prefix folder are written under the test's temporary folder, nginx runs
//! in the foreground as one process (`master_process off`, so as the current user and with no
//! workers to leave behind), and it is killed when the handle is dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::Proc;
use super::wait::poll_until;

pub struct Nginx {
    pub url_base: String,
    pub access_log: PathBuf,
    _proc: Proc,
}

/// The nginx binary, or why the test cannot run.
pub fn nginx_binary() -> Result<PathBuf, String> {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join("nginx");
        if path.is_file() {
            return Ok(path);
        }
    }
    Err("nginx is not installed (apt-get install nginx; .ci/run does)".into())
}

/// Starts nginx serving `root` under `prefix` (a folder it creates); `None`, with the reason
/// printed, when there is no nginx here.
pub fn start_nginx(root: &Path, prefix: &Path) -> Option<Nginx> {
    let binary = match nginx_binary() {
        Ok(binary) => binary,
        Err(why) => {
            eprintln!("skipped: {why}");
            return None;
        }
    };
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    let access_log = prefix.join("access.log");
    // The port is picked free, then given to nginx: another process could take it between the
    // two, so a failed start is tried again on another port.
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let tmp = prefix.join("tmp");
        let t = tmp.display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {err} info;\nevents {{ worker_connections 256; }}\n\
             http {{\n  log_format bytes '$status $body_bytes_sent \"$http_range\"';\n  access_log {log} bytes;\n\
             client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n\
             uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
             sendfile on;\n  keepalive_requests 100000;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            err = prefix.join("error.log").display(),
            log = access_log.display(),
            root = root.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, config).unwrap();
        let stderr = std::fs::File::create(prefix.join("stderr.log")).unwrap();
        let mut proc = Proc::spawn(
            "nginx",
            Command::new(&binary)
                .arg("-p")
                .arg(prefix)
                .arg("-e")
                .arg(prefix.join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr),
        );
        let up = poll_until(Duration::from_secs(10), || {
            proc.child.try_wait().ok().flatten().is_some()
                || TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if up && proc.child.try_wait().ok().flatten().is_none() {
            return Some(Nginx {
                url_base: format!("http://127.0.0.1:{port}"),
                access_log,
                _proc: proc,
            });
        }
        proc.kill();
        let why = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        eprintln!("nginx did not start on port {port}: {why}");
    }
    panic!("nginx would not start (see above)");
}

impl Nginx {
    /// Bytes of part data nginx sent in `206` answers, from its access log.
    pub fn partial_bytes_sent(&self) -> u64 {
        self.answers()
            .iter()
            .filter(|(status, _)| *status == 206)
            .map(|(_, bytes)| bytes)
            .sum()
    }

    /// (status, body bytes sent) of every request logged so far.
    pub fn answers(&self) -> Vec<(u16, u64)> {
        let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
            })
            .collect()
    }
}
