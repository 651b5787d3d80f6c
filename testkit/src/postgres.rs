//! A throwaway PostgreSQL cluster for tests: Debian's `postgresql` package
//! (`initdb` + `postgres`) on a temporary directory and a free port, as the
//! `postgres` user when the tests run as root (the server refuses root).
//!
//! One cluster per test binary ([`PgCluster::shared`]) hands each test a
//! fresh database; a test that restarts the server starts its own. Every
//! server process is spawned by one long-lived thread with a parent-death
//! signal, so none outlives the test binary, even one killed by a signal.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The directory holding `initdb`, `postgres` and `psql`: `MLD_PG_BIN`, else
/// the newest `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLD_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server found under /usr/lib/postgresql: run `bash scripts/test` (it \
             installs it), or `apt-get install -y postgresql`, or set MLD_PG_BIN to the directory \
             holding initdb and postgres"
        ),
    }
}

/// The uid and gid to run the server as: `postgres`'s when we are root.
fn server_user() -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: getuid cannot fail; getpwnam returns a static record or null.
    unsafe {
        if libc::getuid() != 0 {
            return None;
        }
        let name = c"postgres";
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "running as root but there is no `postgres` user: `apt-get install -y postgresql` creates it"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn as_server_user(command: &mut Command, death_signal: bool) {
    use std::os::unix::process::CommandExt;
    let user = server_user();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After the uid change, which would clear it.
            if death_signal && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns server processes from one thread that lives as long as the test
/// binary: a parent-death signal fires when the spawning *thread* exits.
fn spawn_server(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("postgres-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("a thread to spawn PostgreSQL from");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply_tx))
        .expect("the spawner thread lives");
    reply_rx.recv().expect("the spawner thread answers")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running PostgreSQL server on its own data directory; stopped and
/// removed on drop.
pub struct PgCluster {
    root: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl PgCluster {
    /// The cluster this test binary shares: each test takes its own database
    /// from it with [`PgCluster::fresh_database`].
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// Makes a cluster with `initdb` and starts its server.
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let root = tempfile::Builder::new()
            .prefix("mld-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory to postgres");
        }
        let data = root.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_server_user(&mut initdb, false);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PgCluster {
            root,
            bin,
            port: free_port(),
            child: Mutex::new(None),
        };
        cluster.start_server();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// Starts the server (again), on the same port; waits until it answers.
    pub fn start_server(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        assert!(slot.is_none(), "the PostgreSQL server is already running");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.root.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
                // Test databases: speed over durability (the store's own
                // durability is tested on SQLite with strace).
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.root.path().join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        as_server_user(&mut command, true);
        let mut child = spawn_server(command).expect("start postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "postgres exited ({status}) while starting: {}",
                    self.log_tail()
                );
            }
            if self.psql("postgres", "SELECT 1").is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within 60 s: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        *slot = Some(child);
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits.
    pub fn stop_server(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs one SQL command with `psql` as the superuser.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mld_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// The certificate files of a cluster serving TLS ([`PgCluster::enable_tls`]).
pub struct TlsFiles {
    /// The CA that signed the server's certificate (for `sslrootcert`).
    pub ca: PathBuf,
    /// Another CA, which signed nothing the server shows: verification with
    /// it must fail.
    pub wrong_ca: PathBuf,
}

impl PgCluster {
    /// Turns TLS on (`ssl = on`) with a certificate for `127.0.0.1` and
    /// `localhost` signed by a throwaway CA made here with the `openssl`
    /// command, and restarts the server. Plain connections still work.
    pub fn enable_tls(&self) -> TlsFiles {
        let dir = self.root.path().join("tls");
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        make_ca(&dir, "ca");
        make_ca(&dir, "wrong-ca");
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the extensions file");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        let data = self.data_dir();
        for file in ["server.crt", "server.key"] {
            let target = data.join(file);
            std::fs::copy(dir.join(file), &target).expect("copy into the data directory");
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the certificate");
            if let Some((uid, gid)) = server_user() {
                std::os::unix::fs::chown(&target, Some(uid), Some(gid))
                    .expect("chown the certificate to postgres");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("write postgresql.conf");
        self.stop_server();
        self.start_server();
        TlsFiles {
            ca: dir.join("ca.crt"),
            wrong_ca: dir.join("wrong-ca.crt"),
        }
    }
}

/// A self-signed CA certificate and key: `<name>.crt`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    let (key, crt, subject) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN=mld test {name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subject,
            "-keyout",
            &key,
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
